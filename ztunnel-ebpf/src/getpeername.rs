//! `cgroup/getpeername4` and `cgroup/getpeername6`: after the connect hook rewrote an
//! application's connect to the in-pod outbound listener, `getpeername()` on its socket would say
//! 127.0.0.1:15001. These hooks give it back the original destination (as Cilium does), from the
//! entry `sockops` filed, so the application sees the peer it asked for.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_addr},
    helpers::generated::bpf_get_netns_cookie,
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use ztunnel_common::{
    ConnectionKey, FAMILY_IPV4, FAMILY_IPV6, OriginalDestination, constants::OUTBOUND_PORT,
};

use crate::{helpers::address_bytes, maps::ORIGINAL_DESTINATIONS};

/// getpeername hooks must return 1.
const PROCEED: i32 = 1;
const LOOPBACK_V4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
const LOOPBACK_V6: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
const V4_MAPPED_PREFIX: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// Restores the original IPv4 peer of a redirected socket. Minimum kernel 5.8.
#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands us a valid `bpf_sock_addr` for the duration of the program.
    let sock_addr = unsafe { &mut *ctx.sock_addr };
    // SAFETY: readable context fields.
    let (peer, port) = unsafe {
        (
            read_volatile(&sock_addr.user_ip4),
            read_volatile(&sock_addr.user_port),
        )
    };
    if peer != LOOPBACK_V4 || port != u32::from(OUTBOUND_PORT.to_be()) {
        return PROCEED;
    }
    // SAFETY: `sk` is set for getpeername hooks; `src_ip4`/`src_port` are readable fields.
    let (local, local_port) = unsafe {
        let socket: *const bpf_sock = sock_addr.__bindgen_anon_1.sk;
        (
            read_volatile(&(*socket).src_ip4),
            read_volatile(&(*socket).src_port),
        )
    };
    if let Some(original) = lookup(
        &ctx,
        [local, 0, 0, 0],
        [LOOPBACK_V4, 0, 0, 0],
        local_port,
        FAMILY_IPV4,
    ) && original.family == FAMILY_IPV4
    {
        sock_addr.user_ip4 = u32::from_ne_bytes([
            original.address[0],
            original.address[1],
            original.address[2],
            original.address[3],
        ]);
        sock_addr.user_port = u32::from(original.port.to_be());
    }
    PROCEED
}

/// Restores the original IPv6 (or IPv4-mapped) peer of a redirected socket. Minimum kernel 5.8.
#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in `getpeername4`.
    let sock_addr = unsafe { &mut *ctx.sock_addr };
    // SAFETY: readable context fields.
    let (peer, port) = unsafe {
        (
            [
                read_volatile(&sock_addr.user_ip6[0]),
                read_volatile(&sock_addr.user_ip6[1]),
                read_volatile(&sock_addr.user_ip6[2]),
                read_volatile(&sock_addr.user_ip6[3]),
            ],
            read_volatile(&sock_addr.user_port),
        )
    };
    let mapped_loopback = [0, 0, V4_MAPPED_PREFIX, LOOPBACK_V4];
    if (peer != LOOPBACK_V6 && peer != mapped_loopback) || port != u32::from(OUTBOUND_PORT.to_be())
    {
        return PROCEED;
    }
    // SAFETY: `sk` is set for getpeername hooks; `src_ip6`/`src_port` are readable fields.
    let (local, local_port) = unsafe {
        let socket: *const bpf_sock = sock_addr.__bindgen_anon_1.sk;
        (
            [
                read_volatile(&(*socket).src_ip6[0]),
                read_volatile(&(*socket).src_ip6[1]),
                read_volatile(&(*socket).src_ip6[2]),
                read_volatile(&(*socket).src_ip6[3]),
            ],
            read_volatile(&(*socket).src_port),
        )
    };
    let found = if peer == mapped_loopback {
        lookup(
            &ctx,
            [local[3], 0, 0, 0],
            [LOOPBACK_V4, 0, 0, 0],
            local_port,
            FAMILY_IPV4,
        )
    } else {
        lookup(&ctx, local, LOOPBACK_V6, local_port, FAMILY_IPV6)
    };
    let Some(original) = found else {
        return PROCEED;
    };
    let address = original.address;
    let words = if original.family == FAMILY_IPV4 {
        [
            0,
            0,
            V4_MAPPED_PREFIX,
            u32::from_ne_bytes([address[0], address[1], address[2], address[3]]),
        ]
    } else {
        [
            u32::from_ne_bytes([address[0], address[1], address[2], address[3]]),
            u32::from_ne_bytes([address[4], address[5], address[6], address[7]]),
            u32::from_ne_bytes([address[8], address[9], address[10], address[11]]),
            u32::from_ne_bytes([address[12], address[13], address[14], address[15]]),
        ]
    };
    write_ip6(sock_addr, words);
    sock_addr.user_port = u32::from(original.port.to_be());
    PROCEED
}

#[inline(always)]
fn write_ip6(sock_addr: &mut bpf_sock_addr, words: [u32; 4]) {
    sock_addr.user_ip6[0] = words[0];
    sock_addr.user_ip6[1] = words[1];
    sock_addr.user_ip6[2] = words[2];
    sock_addr.user_ip6[3] = words[3];
}

/// The entry `sockops` filed for this application socket (local = client, peer = listener).
#[inline(always)]
fn lookup(
    ctx: &SockAddrContext,
    client_words: [u32; 4],
    proxy_words: [u32; 4],
    client_port: u32,
    family: u16,
) -> Option<OriginalDestination> {
    // SAFETY: valid for sock_addr programs (5.7).
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    let key = ConnectionKey {
        netns_cookie,
        client_address: address_bytes(client_words),
        proxy_address: address_bytes(proxy_words),
        client_port: client_port as u16,
        proxy_port: OUTBOUND_PORT,
        family,
        padding: 0,
    };
    // SAFETY: values are plain integers; copied at once.
    unsafe { ORIGINAL_DESTINATIONS.get(key) }.copied()
}
