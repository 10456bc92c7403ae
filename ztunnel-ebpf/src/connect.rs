//! `cgroup/connect4` and `cgroup/connect6`: the first hook an outbound TCP connection meets.
//!
//! For a socket of an enrolled pod, the destination is rewritten to the pod's own outbound
//! listener (127.0.0.1:15001 or [::1]:15001) and the original destination is saved under the
//! socket cookie. Skipped: non-TCP, sockets marked by ztunnel, the pod's loopback.
//!
//! Fail mode: the hook looks up the in-pod outbound listener. If it is there, redirect. If not
//! (ztunnel down or the pod's listeners closed), fail-closed still rewrites to the listener
//! address, so the connect fails with `ECONNREFUSED` on the pod's loopback and no SYN leaves the
//! pod; fail-open lets the connect go direct.

use aya_ebpf::{
    bindings::{BPF_ANY, bpf_sock_addr},
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use aya_log_ebpf::{debug, warn};
use ztunnel_common::{
    FAMILY_IPV4, FAMILY_IPV6, OriginalDestination, PodRecord,
    constants::{BYPASS_MARK, OUTBOUND_PORT, UPSTREAM_MARK},
};

use crate::{
    helpers::{address_bytes, count, enrolled_pod, fail_open, tcp_listener_exists},
    maps::CONNECT_DESTINATIONS,
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

/// Rewrites IPv4 TCP connects of enrolled pods. Minimum kernel 5.7 (netns cookie, bpf_link).
#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands us a valid `bpf_sock_addr` for the duration of the program.
    let sock_addr = unsafe { &mut *ctx.sock_addr };
    let Some(pod) = captured_pod(&ctx, sock_addr) else {
        return PROCEED;
    };
    let destination = sock_addr.user_ip4;
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
/// ::ffff:127.0.0.1). Minimum kernel 5.7.
#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in `connect4`.
    let sock_addr = unsafe { &mut *ctx.sock_addr };
    let Some(pod) = captured_pod(&ctx, sock_addr) else {
        return PROCEED;
    };
    let destination = [
        sock_addr.user_ip6[0],
        sock_addr.user_ip6[1],
        sock_addr.user_ip6[2],
        sock_addr.user_ip6[3],
    ];
    let mapped = destination[0] == 0 && destination[1] == 0 && destination[2] == V4_MAPPED_PREFIX;
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

/// The enrolled pod owning this TCP socket, unless ztunnel marked the socket.
#[inline(always)]
fn captured_pod(ctx: &SockAddrContext, sock_addr: &bpf_sock_addr) -> Option<PodRecord> {
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
        {
            warn!(
                ctx,
                "connect: original-destination map full; the proxy will close this connection"
            );
        }
        count(pod, |counters| &mut counters.outbound_redirected);
        debug!(ctx, "connect: redirected to outbound listener");
    } else if fail_open() {
        count(pod, |counters| &mut counters.outbound_passed);
        return;
    } else {
        count(pod, |counters| &mut counters.outbound_refused);
        debug!(ctx, "connect: no outbound listener in pod, fail-closed");
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
