//! `sockops`: the second hook of a redirected connection.
//!
//! At `ACTIVE_ESTABLISHED` (the application's socket finished its handshake with the in-pod
//! outbound listener) the original destination saved by the connect hook under the socket
//! cookie moves to a key the proxy can compute from the *accepted* socket: the netns cookie plus
//! the 4-tuple (the accepted socket's cookie is not the client's). The entry is deleted when the
//! application's socket closes.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG,
    },
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
};
use ztunnel_common::{ConnectionKey, FAMILY_IPV4, FAMILY_IPV6, constants::OUTBOUND_PORT};

use crate::{
    helpers::address_bytes,
    maps::{CONNECT_DESTINATIONS, ORIGINAL_DESTINATIONS},
};

const AF_INET: u32 = 2;
/// `TCP_CLOSE` from include/net/tcp_states.h.
const TCP_CLOSE: u32 = 7;

/// Re-keys original destinations at establishment and deletes them on close.
/// Minimum kernel 5.15 (`bpf_get_netns_cookie` in sockops).
#[sock_ops]
pub fn sockops_rekey(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => on_close(&ctx),
        _ => {}
    }
    1
}

fn on_established(ctx: &SockOpsContext) {
    if remote_port(ctx) != OUTBOUND_PORT {
        return;
    }
    // SAFETY: socket cookie is valid for sock_ops programs (4.20).
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    // SAFETY: values are plain integers; copied at once.
    let Some(original) = (unsafe { CONNECT_DESTINATIONS.get(socket_cookie) }).copied() else {
        return;
    };
    let key = connection_key(ctx);
    if ORIGINAL_DESTINATIONS
        .insert(key, original, BPF_ANY as u64)
        .is_ok()
    {
        let _ = CONNECT_DESTINATIONS.remove(socket_cookie);
        let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
    }
}

fn on_close(ctx: &SockOpsContext) {
    let key = connection_key(ctx);
    let _ = ORIGINAL_DESTINATIONS.remove(key);
}

/// The key as the application's socket sees the connection (local = client, remote = proxy).
#[inline(always)]
fn connection_key(ctx: &SockOpsContext) -> ConnectionKey {
    // SAFETY: netns cookie is valid for sock_ops programs (5.15).
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.ops.cast()) };
    // Every context field is read once, up front, with a volatile load: the verifier rejects
    // loads through a context pointer the compiler has offset and carried across branches.
    let ops = ctx.ops;
    // SAFETY: `ops` is the valid context; each field is a readable sock_ops field.
    let (family, local_ip4, remote_ip4, local_ip6, remote_ip6, local_port) = unsafe {
        (
            read_volatile(&(*ops).family),
            read_volatile(&(*ops).local_ip4),
            read_volatile(&(*ops).remote_ip4),
            [
                read_volatile(&(*ops).local_ip6[0]),
                read_volatile(&(*ops).local_ip6[1]),
                read_volatile(&(*ops).local_ip6[2]),
                read_volatile(&(*ops).local_ip6[3]),
            ],
            [
                read_volatile(&(*ops).remote_ip6[0]),
                read_volatile(&(*ops).remote_ip6[1]),
                read_volatile(&(*ops).remote_ip6[2]),
                read_volatile(&(*ops).remote_ip6[3]),
            ],
            read_volatile(&(*ops).local_port),
        )
    };
    let proxy_port = remote_port(ctx);
    let ipv4 = family == AF_INET;
    let (client_words, proxy_words) = if ipv4 {
        ([local_ip4, 0, 0, 0], [remote_ip4, 0, 0, 0])
    } else {
        (local_ip6, remote_ip6)
    };
    ConnectionKey {
        netns_cookie,
        client_address: address_bytes(client_words),
        proxy_address: address_bytes(proxy_words),
        client_port: local_port as u16,
        proxy_port,
        family: if ipv4 { FAMILY_IPV4 } else { FAMILY_IPV6 },
        padding: 0,
    }
}

/// The peer port in host order. sockops stores the network-order port in the upper 16 bits of
/// `remote_port` on little-endian machines.
#[inline(always)]
fn remote_port(ctx: &SockOpsContext) -> u16 {
    // SAFETY: `remote_port` is a readable sock_ops field.
    let raw = unsafe { read_volatile(&(*ctx.ops).remote_port) };
    u16::from_be((raw >> 16) as u16)
}
