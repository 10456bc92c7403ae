//! Part of `cgroup/connect4` and `connect6`: the return path of a proxy's original-source
//! connections to the application in its own pod.
//!
//! A proxy that keeps the client's address connects to the application from that foreign
//! address (`IP_TRANSPARENT`). The application's replies are addressed to the client and would
//! leave the pod, unless they are routed back to the proxy's socket. Our proxy marks such sockets
//! [`UPSTREAM_MARK`] itself; Istio's ztunnel marks them [`BYPASS_MARK`] and relies on its in-pod
//! connmark rules. Without iptables, this hook gives such a socket [`UPSTREAM_MARK`] before its
//! SYN is sent: a socket marked [`BYPASS_MARK`], bound to an address that is not its pod's own,
//! dialling one of its pod's own addresses. The pod's routing (`tcp_fwmark_accept`, rule
//! `fwmark UPSTREAM_MARK lookup` the local table, see `docs/architecture.md`) then brings the
//! application's replies back to it. Every other [`BYPASS_MARK`] socket keeps its mark: the
//! bypass mark itself is never routed to the local table, because the proxy's outbound sockets
//! carry it and must leave the pod.

use core::{ffi::c_void, ptr::read_volatile};

use aya_ebpf::{bindings::bpf_sock, helpers::generated::bpf_setsockopt, programs::SockAddrContext};
use aya_log_ebpf::{debug, warn};
use ztunnel_common::{
    FAMILY_IPV4, LOG_LEVEL_DEBUG, LOG_LEVEL_WARN, WorkloadKey, constants::UPSTREAM_MARK,
};

use crate::{helpers::address_bytes, maps::WORKLOADS};

const AF_INET: u32 = 2;
/// `SOL_SOCKET` and `SO_MARK` from include/uapi/asm-generic/socket.h.
const SOL_SOCKET: i32 = 1;
const SO_MARK: i32 = 36;

/// Gives a bypass-marked socket the return-path mark when it is an original-source connection
/// to its own pod. `destination` is what the socket dials (IPv4-mapped destinations in IPv4
/// form). Minimum kernel 5.8 (`bpf_setsockopt` in connect hooks).
#[inline(always)]
pub fn mark_original_source_upstream(
    ctx: &SockAddrContext,
    netns_cookie: u64,
    destination: &WorkloadKey,
) {
    if !own_address(netns_cookie, destination) {
        return;
    }
    let Some(source) = bound_source(ctx, destination.family) else {
        return;
    };
    if own_address(netns_cookie, &source) {
        return;
    }
    let mut mark = UPSTREAM_MARK;
    // SAFETY: the sock_addr context of a connect hook is a valid `bpf_setsockopt` target; the
    // option value is a live `u32` on this stack.
    let result = unsafe {
        bpf_setsockopt(
            ctx.sock_addr.cast(),
            SOL_SOCKET,
            SO_MARK,
            (&mut mark as *mut u32).cast::<c_void>(),
            core::mem::size_of::<u32>() as i32,
        )
    };
    if result != 0 {
        if crate::helpers::logging(LOG_LEVEL_WARN) {
            warn!(
                ctx,
                "connect: cannot give an original-source upstream socket the return-path mark ({})",
                result
            );
        }
    } else if crate::helpers::logging(LOG_LEVEL_DEBUG) {
        debug!(
            ctx,
            "connect: original-source upstream socket marked for the return path"
        );
    }
}

/// Whether `address` is one of the addresses of the pod in this netns.
#[inline(always)]
fn own_address(netns_cookie: u64, address: &WorkloadKey) -> bool {
    // SAFETY: values are plain integers; read at once.
    unsafe { WORKLOADS.get(address) }.is_some_and(|record| record.netns_cookie == netns_cookie)
}

/// The address the socket is bound to, in `family` form, if it is bound to one that can be a
/// remote client (not unspecified, not loopback).
#[inline(always)]
fn bound_source(ctx: &SockAddrContext, family: u16) -> Option<WorkloadKey> {
    // SAFETY: `sk` is always set for connect hooks.
    let socket: *const bpf_sock = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    // SAFETY: each field is a readable `bpf_sock` field, read once with a volatile load.
    let (socket_family, source_ip4, source_ip6) = unsafe {
        (
            read_volatile(&(*socket).family),
            read_volatile(&(*socket).src_ip4),
            [
                read_volatile(&(*socket).src_ip6[0]),
                read_volatile(&(*socket).src_ip6[1]),
                read_volatile(&(*socket).src_ip6[2]),
                read_volatile(&(*socket).src_ip6[3]),
            ],
        )
    };
    let words = if family == FAMILY_IPV4 {
        // An IPv6 socket dialling an IPv4-mapped address is bound to ::ffff:a.b.c.d.
        let source = if socket_family == AF_INET {
            source_ip4
        } else {
            source_ip6[3]
        };
        if source == 0 || source.to_ne_bytes()[0] == 127 {
            return None;
        }
        [source, 0, 0, 0]
    } else {
        let loopback = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
        if source_ip6 == [0; 4] || source_ip6 == loopback {
            return None;
        }
        source_ip6
    };
    Some(WorkloadKey {
        address: address_bytes(words),
        family,
        padding: 0,
    })
}
