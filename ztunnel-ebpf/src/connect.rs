//! `cgroup/connect4` and `cgroup/connect6`: the first hook an outbound TCP connection meets.
//!
//! For a socket of an enrolled pod, the destination is rewritten to the pod's own outbound
//! listener (127.0.0.1:15001 or [::1]:15001) and the original destination is saved under the
//! socket cookie. A socket not bound to an address is first bound to the pod's own address, so
//! the listener sees the pod (not 127.0.0.1) as the peer, as under iptables `REDIRECT`. Skipped:
//! non-TCP, sockets marked by a proxy, the pod's loopback; a bypass-marked socket that connects to
//! its own pod from a foreign address gets the return-path mark (`return_path.rs`).
//!
//! Fail mode: the hook looks up the in-pod outbound listener. If it is there, redirect. If not
//! (ztunnel down or the pod's listeners closed), fail-closed still rewrites to the listener
//! address, so the connect fails with `ECONNREFUSED` on the pod's loopback and no SYN leaves the
//! pod; fail-open lets the connect go direct.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{BPF_ANY, bpf_sock, bpf_sock_addr},
    helpers::generated::{bpf_bind, bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use aya_log_ebpf::{debug, warn};
use ztunnel_common::{
    FAMILY_IPV4, FAMILY_IPV6, LOG_LEVEL_DEBUG, LOG_LEVEL_WARN, OriginalDestination, PodRecord,
    WorkloadKey,
    constants::{BYPASS_MARK, OUTBOUND_PORT, UPSTREAM_MARK},
};

use crate::{
    helpers::{address_bytes, count, enrolled_pod, fail_open, logging, tcp_listener_exists},
    maps::CONNECT_DESTINATIONS,
    return_path::mark_original_source_upstream,
};

/// Return value that lets the connect proceed (0 would fail it with `EPERM`).
const PROCEED: i32 = 1;
const SOCK_STREAM: u32 = 1;
/// 127.0.0.1 as the kernel stores it (network order in a `u32`).
const LOOPBACK_V4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
/// ::1 as the kernel stores it.
const LOOPBACK_V6: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
/// ::ffff:0:0/96 prefix word of an IPv4-mapped IPv6 address.
const V4_MAPPED_PREFIX: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// `sizeof(struct sockaddr_in)` and `sizeof(struct sockaddr_in6)`.
const SOCKADDR_IN_SIZE: usize = 16;
const SOCKADDR_IN6_SIZE: usize = 28;

/// Rewrites IPv4 TCP connects of enrolled pods. Minimum kernel 5.8 (netns cookie and bpf_link:
/// 5.7; `bpf_setsockopt` in connect hooks: 5.8).
#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands us a valid `bpf_sock_addr` for the duration of the program.
    let sock_addr = unsafe { &mut *ctx.sock_addr };
    let destination = sock_addr.user_ip4;
    let Some(pod) = captured_pod(&ctx, sock_addr, [destination, 0, 0, 0], FAMILY_IPV4) else {
        return PROCEED;
    };
    if destination.to_ne_bytes()[0] == 127 {
        return PROCEED;
    }
    let port_be = sock_addr.user_port as u16;
    redirect(
        &ctx,
        sock_addr,
        &pod,
        false,
        [destination, 0, 0, 0],
        port_be,
        [LOOPBACK_V4, 0, 0, 0],
    );
    PROCEED
}

/// Rewrites IPv6 TCP connects of enrolled pods (IPv4-mapped destinations go to
/// ::ffff:127.0.0.1). Minimum kernel 5.8.
#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in `connect4`.
    let sock_addr = unsafe { &mut *ctx.sock_addr };
    let destination = [
        sock_addr.user_ip6[0],
        sock_addr.user_ip6[1],
        sock_addr.user_ip6[2],
        sock_addr.user_ip6[3],
    ];
    let mapped = destination[0] == 0 && destination[1] == 0 && destination[2] == V4_MAPPED_PREFIX;
    let pod = if mapped {
        captured_pod(&ctx, sock_addr, [destination[3], 0, 0, 0], FAMILY_IPV4)
    } else {
        captured_pod(&ctx, sock_addr, destination, FAMILY_IPV6)
    };
    let Some(pod) = pod else {
        return PROCEED;
    };
    if destination == LOOPBACK_V6 || (mapped && destination[3].to_ne_bytes()[0] == 127) {
        return PROCEED;
    }
    let port_be = sock_addr.user_port as u16;
    if mapped {
        let listener = [0, 0, V4_MAPPED_PREFIX, LOOPBACK_V4];
        redirect(
            &ctx,
            sock_addr,
            &pod,
            false,
            [destination[3], 0, 0, 0],
            port_be,
            listener,
        );
    } else {
        redirect(
            &ctx,
            sock_addr,
            &pod,
            true,
            destination,
            port_be,
            LOOPBACK_V6,
        );
    }
    PROCEED
}

/// The enrolled pod owning this TCP socket, unless a proxy marked the socket. A bypass-marked
/// socket dialling `destination_words` (of `family`) may get the return-path mark on the way.
#[inline(always)]
fn captured_pod(
    ctx: &SockAddrContext,
    sock_addr: &bpf_sock_addr,
    destination_words: [u32; 4],
    family: u16,
) -> Option<PodRecord> {
    if sock_addr.type_ != SOCK_STREAM {
        return None;
    }
    // SAFETY: `bpf_get_netns_cookie` accepts the sock_addr context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    let pod = enrolled_pod(netns_cookie)?;
    // SAFETY: `sk` is always set for connect hooks; `mark` is a readable `bpf_sock` field.
    let mark = unsafe { (*sock_addr.__bindgen_anon_1.sk).mark };
    if mark == BYPASS_MARK || mark == UPSTREAM_MARK {
        count(&pod, |counters| &mut counters.outbound_passed);
        if mark == BYPASS_MARK {
            let destination = WorkloadKey {
                address: address_bytes(destination_words),
                family,
                padding: 0,
            };
            mark_original_source_upstream(ctx, netns_cookie, &destination);
        }
        return None;
    }
    Some(pod)
}

/// Sends the connect to the in-pod listener at `listener_words` (fail-closed or serving), or
/// leaves it alone (fail-open with no listener).
#[inline(always)]
fn redirect(
    ctx: &SockAddrContext,
    sock_addr: &mut bpf_sock_addr,
    pod: &PodRecord,
    ipv6: bool,
    destination_words: [u32; 4],
    destination_port_be: u16,
    listener_words: [u32; 4],
) {
    let listener_port_be = OUTBOUND_PORT.to_be();
    let lookup_v6 = listener_words[0] == 0 && listener_words[2] != V4_MAPPED_PREFIX;
    let serving = if lookup_v6 {
        tcp_listener_exists(ctx.sock_addr.cast(), true, listener_words, listener_port_be)
    } else {
        tcp_listener_exists(
            ctx.sock_addr.cast(),
            false,
            [LOOPBACK_V4, 0, 0, 0],
            listener_port_be,
        )
    };
    if serving {
        bind_to_pod_address(ctx, pod, listener_words);
        // SAFETY: helpers valid for sock_addr programs (socket cookie: 5.7, netns cookie: 5.7).
        let (socket_cookie, netns_cookie) = unsafe {
            (
                bpf_get_socket_cookie(ctx.sock_addr.cast()),
                bpf_get_netns_cookie(ctx.sock_addr.cast()),
            )
        };
        let original = OriginalDestination {
            netns_cookie,
            socket_cookie,
            address: address_bytes(destination_words),
            port: u16::from_be(destination_port_be),
            family: if ipv6 { FAMILY_IPV6 } else { FAMILY_IPV4 },
            padding: 0,
        };
        if CONNECT_DESTINATIONS
            .insert(socket_cookie, original, BPF_ANY as u64)
            .is_err()
            && logging(LOG_LEVEL_WARN)
        {
            warn!(
                ctx,
                "connect: original-destination map full; the proxy will close this connection"
            );
        }
        count(pod, |counters| &mut counters.outbound_redirected);
        if logging(LOG_LEVEL_DEBUG) {
            debug!(ctx, "connect: redirected to outbound listener");
        }
    } else if fail_open() {
        count(pod, |counters| &mut counters.outbound_passed);
        return;
    } else {
        count(pod, |counters| &mut counters.outbound_refused);
        if logging(LOG_LEVEL_DEBUG) {
            debug!(ctx, "connect: no outbound listener in pod, fail-closed");
        }
    }
    if listener_words[0] == LOOPBACK_V4 {
        sock_addr.user_ip4 = LOOPBACK_V4;
    } else {
        sock_addr.user_ip6[0] = listener_words[0];
        sock_addr.user_ip6[1] = listener_words[1];
        sock_addr.user_ip6[2] = listener_words[2];
        sock_addr.user_ip6[3] = listener_words[3];
    }
    sock_addr.user_port = u32::from(listener_port_be);
}

/// Binds a socket that is not bound to an address to the pod's own address (port left to the
/// connect), so the outbound listener sees the pod as the peer, as it would under iptables
/// `REDIRECT`; the original destination is then keyed by that address (`sockops.rs`). Sockets
/// the application bound itself, and pods whose address of that family is unknown, keep their
/// source (127.0.0.1 / ::1). Minimum kernel 4.17 (`bpf_bind`).
#[inline(always)]
fn bind_to_pod_address(ctx: &SockAddrContext, pod: &PodRecord, listener_words: [u32; 4]) {
    // SAFETY: `sk` is always set for connect hooks; each field is a readable `bpf_sock` field.
    let (source_ip4, source_ip6) = unsafe {
        let socket: *const bpf_sock = (*ctx.sock_addr).__bindgen_anon_1.sk;
        (
            read_volatile(&(*socket).src_ip4),
            [
                read_volatile(&(*socket).src_ip6[0]),
                read_volatile(&(*socket).src_ip6[1]),
                read_volatile(&(*socket).src_ip6[2]),
                read_volatile(&(*socket).src_ip6[3]),
            ],
        )
    };
    let ipv4 = pod.ipv4;
    let ipv6 = pod.ipv6;
    if listener_words[0] == LOOPBACK_V4 {
        if source_ip4 != 0 || ipv4 == [0; 4] {
            return;
        }
        let mut sockaddr = [0u8; SOCKADDR_IN_SIZE];
        sockaddr[0..2].copy_from_slice(&AF_INET.to_ne_bytes());
        sockaddr[4..8].copy_from_slice(&ipv4);
        bind(ctx, &mut sockaddr);
        return;
    }
    if source_ip6 != [0; 4] {
        return;
    }
    let mut address = [0u8; 16];
    if listener_words[2] == V4_MAPPED_PREFIX {
        if ipv4 == [0; 4] {
            return;
        }
        address[10] = 0xff;
        address[11] = 0xff;
        address[12..16].copy_from_slice(&ipv4);
    } else {
        if ipv6 == [0; 16] {
            return;
        }
        address = ipv6;
    }
    let mut sockaddr = [0u8; SOCKADDR_IN6_SIZE];
    sockaddr[0..2].copy_from_slice(&AF_INET6.to_ne_bytes());
    sockaddr[8..24].copy_from_slice(&address);
    bind(ctx, &mut sockaddr);
}

/// `bpf_bind` with a `sockaddr_in`/`sockaddr_in6` (port 0) built on the stack. A failure (the
/// socket has a port already, the address is gone) leaves the kernel's choice of source.
#[inline(always)]
fn bind<const SIZE: usize>(ctx: &SockAddrContext, sockaddr: &mut [u8; SIZE]) {
    // SAFETY: `sockaddr` is a live, fully initialised buffer of SIZE bytes on this stack.
    let result = unsafe { bpf_bind(ctx.sock_addr, sockaddr.as_mut_ptr().cast(), SIZE as i32) };
    if result != 0 && logging(LOG_LEVEL_DEBUG) {
        debug!(
            ctx,
            "connect: cannot bind the socket to the pod's address ({}); source stays loopback",
            result
        );
    }
}
