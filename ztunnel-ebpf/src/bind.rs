//! `cgroup/bind4` and `cgroup/bind6`: keep ztunnel's in-pod ports for ztunnel.
//!
//! ztunnel's listeners live inside each enrolled pod's netns (15001 outbound, 15006 inbound
//! plaintext, 15008 HBONE). A pod process that bound one of those ports first (for instance
//! while ztunnel restarts) would receive the pod's captured outbound traffic, or answer HBONE
//! and plaintext meant for ztunnel. These hooks refuse such binds with `EPERM`.
//!
//! Trust model: a bind is ztunnel's when its socket carries [`BYPASS_MARK`], which ztunnel sets
//! with `SO_MARK` on every listener before `bind()`. Setting `SO_MARK` needs `CAP_NET_ADMIN` in
//! the pod's network namespace, which pods of the mesh do not have; a pod that has it can set
//! the same mark on its own connections and leave the mesh anyway (the connect hooks pass
//! marked sockets, as Istio's in-pod rules pass 0x539), so the guard is exactly as strong as
//! capture itself. Only TCP binds in enrolled pods are checked; other netns, other ports, UDP,
//! and port 0 (the kernel's choice, from the ephemeral range) are left alone.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::bpf_sock_addr, helpers::generated::bpf_get_netns_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use aya_log_ebpf::warn;
use ztunnel_common::{
    LOG_LEVEL_WARN,
    constants::{BYPASS_MARK, HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT},
};

use crate::helpers::{enrolled_pod, logging};

/// Return value that lets the bind proceed.
const PROCEED: i32 = 1;
/// Return value that fails the bind with `EPERM`.
const REFUSE: i32 = 0;
const SOCK_STREAM: u32 = 1;

/// Refuses IPv4 TCP binds of ztunnel's ports by pod processes. Minimum kernel 5.7
/// (netns cookie in sock_addr programs).
#[cgroup_sock_addr(bind4)]
pub fn bind4(ctx: SockAddrContext) -> i32 {
    guard(&ctx)
}

/// Refuses IPv6 (and dual-stack) TCP binds of ztunnel's ports by pod processes. Minimum kernel 5.7.
#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    guard(&ctx)
}

#[inline(always)]
fn guard(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel hands us a valid `bpf_sock_addr` for the duration of the program.
    let sock_addr: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    // SAFETY: readable context fields.
    let (socket_type, port_be) = unsafe {
        (
            read_volatile(&sock_addr.type_),
            read_volatile(&sock_addr.user_port),
        )
    };
    if socket_type != SOCK_STREAM {
        return PROCEED;
    }
    let port = u16::from_be(port_be as u16);
    if port != OUTBOUND_PORT && port != INBOUND_PLAINTEXT_PORT && port != HBONE_PORT {
        return PROCEED;
    }
    // SAFETY: `bpf_get_netns_cookie` accepts the sock_addr context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    if enrolled_pod(netns_cookie).is_none() {
        return PROCEED;
    }
    // SAFETY: `sk` is always set for bind hooks; `mark` is a readable `bpf_sock` field.
    let mark = unsafe { read_volatile(&(*sock_addr.__bindgen_anon_1.sk).mark) };
    if mark == BYPASS_MARK {
        return PROCEED;
    }
    if logging(LOG_LEVEL_WARN) {
        warn!(
            ctx,
            "bind: refused a pod process binding ztunnel's port {} (EPERM)", port
        );
    }
    REFUSE
}
