//! TC ingress (TCX), attached inside each enrolled pod's netns on its interface: the hook an
//! inbound plaintext TCP connection meets.
//!
//! A connection-opening SYN to a pod IP on any port but ztunnel's own (15001, 15006, 15008) is
//! assigned with `bpf_sk_assign` to the in-pod `IP_TRANSPARENT` listener on 15006, which accepts
//! it with the original destination as its local address (TPROXY semantics: no NAT, no
//! conntrack). Every other packet — established flows, HBONE on 15008, non-TCP — passes on.
//! With no 15006 listener (ztunnel down), fail-closed drops the SYN and fail-open passes it.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_sock_tuple},
    helpers::generated::{bpf_sk_assign, bpf_sk_lookup_tcp, bpf_sk_release},
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr};
use ztunnel_common::{
    FAMILY_IPV4, FAMILY_IPV6, PodRecord, WorkloadKey,
    constants::{HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT},
};

use crate::{
    helpers::{count, enrolled_pod, fail_open},
    maps::WORKLOADS,
};

/// TCX "next": let later programs and the stack decide (we do not own the packet).
const NEXT: i32 = TC_ACT_UNSPEC;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;
/// Offset of the flags byte in the TCP header.
const TCP_FLAGS_OFFSET: usize = 13;
/// `TCP_LISTEN` from include/net/tcp_states.h.
const TCP_LISTEN: u32 = 10;
/// `BPF_F_CURRENT_NETNS`.
const CURRENT_NETNS: u64 = u64::MAX;

/// A new inbound TCP connection as seen in its SYN.
struct Syn {
    tuple: bpf_sock_tuple,
    tuple_size: u32,
    destination: WorkloadKey,
    destination_port: u16,
}

/// Steers new plaintext inbound connections to the 15006 listener. Minimum kernel 6.6 (TCX).
#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    let Some(syn) = parse_syn(&ctx) else {
        return NEXT;
    };
    // SAFETY: values are plain integers; copied at once.
    let Some(workload) = (unsafe { WORKLOADS.get(syn.destination) }).copied() else {
        return NEXT;
    };
    let Some(pod) = enrolled_pod(workload.netns_cookie) else {
        return NEXT;
    };
    let port = syn.destination_port;
    if port == HBONE_PORT || port == OUTBOUND_PORT || port == INBOUND_PLAINTEXT_PORT {
        count(&pod, |counters| &mut counters.inbound_passed);
        return NEXT;
    }
    steer(&ctx, syn, &pod)
}

fn steer(ctx: &TcContext, mut syn: Syn, pod: &PodRecord) -> i32 {
    let listener_port_be = INBOUND_PLAINTEXT_PORT.to_be();
    if syn.tuple_size as usize
        == core::mem::size_of::<aya_ebpf::bindings::bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>()
    {
        syn.tuple.__bindgen_anon_1.ipv4.dport = listener_port_be;
    } else {
        syn.tuple.__bindgen_anon_1.ipv6.dport = listener_port_be;
    }
    // SAFETY: tuple on the stack for the call; the result is released below.
    let listener = unsafe {
        bpf_sk_lookup_tcp(
            ctx.skb.skb.cast(),
            &mut syn.tuple,
            syn.tuple_size,
            CURRENT_NETNS,
            0,
        )
    };
    if listener.is_null() {
        return no_listener(ctx, pod);
    }
    // SAFETY: `listener` is a referenced full socket; `state` is a readable field.
    let is_listener = unsafe { (*listener).state } == TCP_LISTEN;
    let assigned = is_listener
        // SAFETY: assigning a referenced listener socket to this skb (TC, 5.7).
        && unsafe { bpf_sk_assign(ctx.skb.skb.cast(), listener.cast(), 0) } == 0;
    // SAFETY: releasing the reference taken by the lookup.
    unsafe { bpf_sk_release(listener.cast()) };
    if !assigned {
        return no_listener(ctx, pod);
    }
    count(pod, |counters| &mut counters.inbound_redirected);
    TC_ACT_OK as i32
}

fn no_listener(ctx: &TcContext, pod: &PodRecord) -> i32 {
    if fail_open() {
        count(pod, |counters| &mut counters.inbound_passed);
        return NEXT;
    }
    count(pod, |counters| &mut counters.inbound_refused);
    debug!(
        ctx,
        "tc_ingress: no inbound listener in pod, fail-closed drop"
    );
    TC_ACT_SHOT as i32
}

/// The SYN (without ACK) of a new TCP connection, or `None` for any other packet.
#[inline(always)]
fn parse_syn(ctx: &TcContext) -> Option<Syn> {
    let ether_type = u16::from_be(ctx.load::<u16>(12).ok()?);
    // SAFETY: a zeroed tuple is a valid lookup key; one arm is filled below.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let mut destination = WorkloadKey::default();
    let (tcp_offset, tuple_size) = match ether_type {
        ETH_P_IP => {
            let ip: Ipv4Hdr = ctx.load(EthHdr::LEN).ok()?;
            if ip.proto as u8 != IPPROTO_TCP {
                return None;
            }
            let tcp_offset = EthHdr::LEN + usize::from(ip.vihl & 0x0f) * 4;
            let ports: [u8; 4] = ctx.load(tcp_offset).ok()?;
            // SAFETY: filling the IPv4 arm of the zeroed tuple.
            unsafe {
                let ipv4 = &mut tuple.__bindgen_anon_1.ipv4;
                ipv4.saddr = u32::from_ne_bytes(ip.src_addr);
                ipv4.daddr = u32::from_ne_bytes(ip.dst_addr);
                ipv4.sport = u16::from_ne_bytes([ports[0], ports[1]]);
                ipv4.dport = u16::from_ne_bytes([ports[2], ports[3]]);
            }
            destination.address[..4].copy_from_slice(&ip.dst_addr);
            destination.family = FAMILY_IPV4;
            (
                tcp_offset,
                core::mem::size_of::<aya_ebpf::bindings::bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>(
                ),
            )
        }
        ETH_P_IPV6 => {
            let ip: Ipv6Hdr = ctx.load(EthHdr::LEN).ok()?;
            if ip.next_hdr as u8 != IPPROTO_TCP {
                return None;
            }
            let tcp_offset = EthHdr::LEN + Ipv6Hdr::LEN;
            let ports: [u8; 4] = ctx.load(tcp_offset).ok()?;
            // SAFETY: filling the IPv6 arm of the zeroed tuple.
            unsafe {
                let ipv6 = &mut tuple.__bindgen_anon_1.ipv6;
                ipv6.saddr = words(ip.src_addr);
                ipv6.daddr = words(ip.dst_addr);
                ipv6.sport = u16::from_ne_bytes([ports[0], ports[1]]);
                ipv6.dport = u16::from_ne_bytes([ports[2], ports[3]]);
            }
            destination.address = ip.dst_addr;
            destination.family = FAMILY_IPV6;
            (
                tcp_offset,
                core::mem::size_of::<aya_ebpf::bindings::bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>(
                ),
            )
        }
        _ => return None,
    };
    let flags: u8 = ctx.load(tcp_offset + TCP_FLAGS_OFFSET).ok()?;
    if flags & TCP_FLAG_SYN == 0 || flags & TCP_FLAG_ACK != 0 {
        return None;
    }
    let port_bytes: [u8; 2] = ctx.load(tcp_offset + 2).ok()?;
    Some(Syn {
        tuple,
        tuple_size: tuple_size as u32,
        destination,
        destination_port: u16::from_be_bytes(port_bytes),
    })
}

#[inline(always)]
fn words(bytes: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        u32::from_ne_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
        u32::from_ne_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
    ]
}
