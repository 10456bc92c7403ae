//! `cgroup/getsockopt`: answers `getsockopt(SOL_IP, SO_ORIGINAL_DST)` and
//! `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)` on a socket accepted by the in-pod outbound
//! listener, from the entry `sockops` filed, so an unmodified proxy gets the original
//! destination the way it would under iptables REDIRECT. Runs after the kernel's own handler
//! (which fails with `ENOPROTOOPT`/`ENOENT` without conntrack) and overrides its result.
//!
//! A dual-stack listener (Istio's ztunnel listens on `[::]:15001`) accepts an IPv4 client as an
//! `AF_INET6` socket with IPv4-mapped addresses; such a proxy asks `SOL_IP`/`SO_ORIGINAL_DST`
//! first (as it would under iptables, where the IPv4 conntrack entry answers it), so the lookup
//! uses the IPv4 form of the connection, the form `sockops` filed it under.
//!
//! Every other `getsockopt` is passed through untouched; for option buffers larger than a page
//! that relies on kernel >= 6.5 ignoring an unmodified program buffer, which the node's TCX
//! requirement (6.6) already implies.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::bpf_sock, helpers::generated::bpf_get_netns_cookie, macros::cgroup_sockopt,
    programs::SockoptContext,
};
use ztunnel_common::{
    ConnectionKey, FAMILY_IPV4, FAMILY_IPV6, OriginalDestination,
    constants::{IP6T_SO_ORIGINAL_DST, SO_ORIGINAL_DST, SOL_IP, SOL_IPV6},
};

use crate::{helpers::address_bytes, maps::ORIGINAL_DESTINATIONS};

/// Return value that lets the (possibly rewritten) result reach the caller.
const PROCEED: i32 = 1;
const AF_INET: u32 = 2;
/// `sizeof(struct sockaddr_in)`.
const SOCKADDR_IN_SIZE: usize = 16;
/// `sizeof(struct sockaddr_in6)`.
const SOCKADDR_IN6_SIZE: usize = 28;

/// Fills `sockaddr_in`/`sockaddr_in6` for redirected connections. Minimum kernel 5.15
/// (`bpf_get_netns_cookie` in cgroup sockopt programs).
#[cgroup_sockopt(getsockopt)]
pub fn getsockopt(ctx: SockoptContext) -> i32 {
    // SAFETY: the kernel hands us a valid `bpf_sockopt` for the duration of the program.
    let sockopt = unsafe { &mut *ctx.sockopt };
    let wants_v4 = sockopt.level == SOL_IP && sockopt.optname == SO_ORIGINAL_DST;
    let wants_v6 = sockopt.level == SOL_IPV6 && sockopt.optname == IP6T_SO_ORIGINAL_DST;
    if !wants_v4 && !wants_v6 {
        return PROCEED;
    }
    // SAFETY: `sk` is always set for sockopt programs.
    let socket = unsafe { sockopt.__bindgen_anon_1.sk };
    // SAFETY: valid for cgroup sockopt programs.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.sockopt.cast()) };
    let key = accepted_connection_key(socket, netns_cookie);
    // SAFETY: values are plain integers; copied at once.
    let Some(original) = (unsafe { ORIGINAL_DESTINATIONS.get(key) }).copied() else {
        return PROCEED;
    };
    // SAFETY: `optval`/`optval_end` bound the buffer the kernel allocated for this call.
    let (optval, optval_end) = unsafe {
        (
            sockopt.__bindgen_anon_2.optval as *mut u8,
            sockopt.__bindgen_anon_3.optval_end as *mut u8,
        )
    };
    let written = if wants_v4 && original.family == FAMILY_IPV4 {
        write_sockaddr_in(optval, optval_end, &original)
    } else if wants_v6 && original.family == FAMILY_IPV6 {
        write_sockaddr_in6(optval, optval_end, &original)
    } else {
        None
    };
    if let Some(length) = written {
        // Two separate volatile stores: merged into one 8-byte store the verifier rejects it.
        // SAFETY: `optlen` and `retval` are writable fields of the context.
        unsafe {
            core::ptr::write_volatile(&mut sockopt.optlen, length as i32);
            core::ptr::write_volatile(&mut sockopt.retval, 0);
        }
    }
    PROCEED
}

/// The key `sockops` filed, seen from the accepted socket (local = proxy, remote = client).
#[inline(always)]
fn accepted_connection_key(socket: *const bpf_sock, netns_cookie: u64) -> ConnectionKey {
    // Every socket field is read once with a volatile load at its own offset: the verifier
    // forbids arithmetic on socket pointers, which the compiler otherwise emits.
    // SAFETY: `socket` is the context's valid socket; each field is readable in sockopt programs.
    let (family, src_ip4, dst_ip4, src_ip6, dst_ip6, src_port, dst_port) = unsafe {
        (
            read_volatile(&(*socket).family),
            read_volatile(&(*socket).src_ip4),
            read_volatile(&(*socket).dst_ip4),
            [
                read_volatile(&(*socket).src_ip6[0]),
                read_volatile(&(*socket).src_ip6[1]),
                read_volatile(&(*socket).src_ip6[2]),
                read_volatile(&(*socket).src_ip6[3]),
            ],
            [
                read_volatile(&(*socket).dst_ip6[0]),
                read_volatile(&(*socket).dst_ip6[1]),
                read_volatile(&(*socket).dst_ip6[2]),
                read_volatile(&(*socket).dst_ip6[3]),
            ],
            read_volatile(&(*socket).src_port),
            read_volatile(&(*socket).dst_port),
        )
    };
    let v4_mapped = family != AF_INET && is_v4_mapped(&src_ip6) && is_v4_mapped(&dst_ip6);
    let ipv4 = family == AF_INET || v4_mapped;
    let (client_words, proxy_words) = if family == AF_INET {
        ([dst_ip4, 0, 0, 0], [src_ip4, 0, 0, 0])
    } else if v4_mapped {
        ([dst_ip6[3], 0, 0, 0], [src_ip6[3], 0, 0, 0])
    } else {
        (dst_ip6, src_ip6)
    };
    ConnectionKey {
        netns_cookie,
        client_address: address_bytes(client_words),
        proxy_address: address_bytes(proxy_words),
        client_port: u16::from_be(dst_port),
        proxy_port: src_port as u16,
        family: if ipv4 { FAMILY_IPV4 } else { FAMILY_IPV6 },
        padding: 0,
    }
}

/// Whether an IPv6 address (kernel words) is IPv4-mapped (::ffff:a.b.c.d).
#[inline(always)]
fn is_v4_mapped(words: &[u32; 4]) -> bool {
    words[0] == 0 && words[1] == 0 && words[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff])
}

/// Writes `struct sockaddr_in` (family, port, address; zero padding) if it fits.
#[inline(always)]
fn write_sockaddr_in(
    optval: *mut u8,
    optval_end: *mut u8,
    original: &OriginalDestination,
) -> Option<usize> {
    if optval.wrapping_add(SOCKADDR_IN_SIZE) > optval_end {
        return None;
    }
    let mut sockaddr = [0u8; SOCKADDR_IN_SIZE];
    sockaddr[0..2].copy_from_slice(&(FAMILY_IPV4).to_ne_bytes());
    sockaddr[2..4].copy_from_slice(&original.port.to_be_bytes());
    sockaddr[4..8].copy_from_slice(&original.address[0..4]);
    // SAFETY: bounds checked above against `optval_end`.
    unsafe { core::ptr::copy_nonoverlapping(sockaddr.as_ptr(), optval, SOCKADDR_IN_SIZE) };
    Some(SOCKADDR_IN_SIZE)
}

/// Writes `struct sockaddr_in6` (family, port, flowinfo 0, address, scope 0) if it fits.
#[inline(always)]
fn write_sockaddr_in6(
    optval: *mut u8,
    optval_end: *mut u8,
    original: &OriginalDestination,
) -> Option<usize> {
    if optval.wrapping_add(SOCKADDR_IN6_SIZE) > optval_end {
        return None;
    }
    let mut sockaddr = [0u8; SOCKADDR_IN6_SIZE];
    sockaddr[0..2].copy_from_slice(&(FAMILY_IPV6).to_ne_bytes());
    sockaddr[2..4].copy_from_slice(&original.port.to_be_bytes());
    sockaddr[8..24].copy_from_slice(&original.address);
    // SAFETY: bounds checked above against `optval_end`.
    unsafe { core::ptr::copy_nonoverlapping(sockaddr.as_ptr(), optval, SOCKADDR_IN6_SIZE) };
    Some(SOCKADDR_IN6_SIZE)
}
