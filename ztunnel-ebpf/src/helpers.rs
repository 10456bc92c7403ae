//! Small pieces every hook shares: pod lookup, fail mode, counters, address conversion.

use aya_ebpf::{
    bindings::{bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2},
    helpers::generated::{bpf_sk_lookup_tcp, bpf_sk_release},
};
use ztunnel_common::{FAIL_OPEN, PodCounters, PodRecord};

use crate::maps::{CONFIG, PODS, STATS};

/// `BPF_F_CURRENT_NETNS`: look sockets up in the netns of the program's context.
const CURRENT_NETNS: u64 = u64::MAX; // -1 as u64

/// The enrolled pod whose network namespace has this cookie, if any.
#[inline(always)]
pub fn enrolled_pod(netns_cookie: u64) -> Option<PodRecord> {
    // SAFETY: values of `pods` are plain integers; the copy is taken immediately.
    unsafe { PODS.get(netns_cookie) }.copied()
}

/// Whether this node is configured fail-open (the zeroed default is fail-closed).
#[inline(always)]
pub fn fail_open() -> bool {
    CONFIG
        .get(0)
        .is_some_and(|config| config.fail_mode == FAIL_OPEN)
}

/// Adds one to a counter of the pod's per-CPU slot.
#[inline(always)]
pub fn count(pod: &PodRecord, counter: fn(&mut PodCounters) -> &mut u64) {
    if let Some(slot) = STATS.get_ptr_mut(pod.index) {
        // SAFETY: per-CPU slot: only this CPU writes it while the program runs.
        unsafe { *counter(&mut *slot) += 1 };
    }
}

/// 16-byte network-order address from the kernel's `u32` words (IPv4 uses word 0 only).
#[inline(always)]
pub fn address_bytes(words: [u32; 4]) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    let mut index = 0;
    while index < 4 {
        let word = words[index].to_ne_bytes();
        bytes[index * 4] = word[0];
        bytes[index * 4 + 1] = word[1];
        bytes[index * 4 + 2] = word[2];
        bytes[index * 4 + 3] = word[3];
        index += 1;
    }
    bytes
}

/// Whether a TCP listener (or any socket) is bound to `address_words:port_be` in the netns of
/// `ctx`. `ipv6` selects the tuple layout. Minimum kernel 5.2 for sock_addr, 4.20 for TC.
#[inline(always)]
pub fn tcp_listener_exists(
    ctx: *mut core::ffi::c_void,
    ipv6: bool,
    address_words: [u32; 4],
    port_be: u16,
) -> bool {
    // SAFETY: a zeroed tuple is a valid (wildcard source) lookup key.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if ipv6 {
        tuple.__bindgen_anon_1.ipv6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
            saddr: [0; 4],
            daddr: address_words,
            sport: 0,
            dport: port_be,
        };
        core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>()
    } else {
        tuple.__bindgen_anon_1.ipv4.daddr = address_words[0];
        tuple.__bindgen_anon_1.ipv4.dport = port_be;
        core::mem::size_of::<aya_ebpf::bindings::bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>()
    };
    // SAFETY: the tuple lives on the stack for the call; the returned socket is released below.
    let socket = unsafe { bpf_sk_lookup_tcp(ctx, &mut tuple, size as u32, CURRENT_NETNS, 0) };
    if socket.is_null() {
        return false;
    }
    // SAFETY: `socket` is a referenced socket returned by the lookup above.
    unsafe { bpf_sk_release(socket.cast()) };
    true
}
