//! Authorization: a config (workloads and policies, YAML) then, after a NUL byte, the attributes
//! of a connection (identity, source, destination). Every workload's policy set is evaluated
//! for that connection: the verdict must come without a panic, and be the same twice.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use ztunnel::{
    authz::{ConnectionAttributes, evaluate},
    config,
    identity::SpiffeId,
    state::State,
};

fuzz_target!(|data: &[u8]| {
    let (text, attributes) = match data.iter().position(|byte| *byte == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Ok(parsed) = config::parse(text, "<fuzz>") else {
        return;
    };
    let Ok(state) = State::from_config(parsed) else {
        return;
    };
    let (identity, source, destination) = connection(attributes);
    for workload in state.workloads() {
        let connection = ConnectionAttributes {
            source_identity: identity.clone(),
            source,
            destination_workload: workload.clone(),
            destination,
        };
        let first = evaluate(state.policies_for(workload), &connection);
        let second = evaluate(state.policies_for(workload), &connection);
        assert_eq!(first, second, "authorization is not deterministic");
    }
});

/// `[flags][ip bytes...][ports][identity text]`: bit 0 of flags = IPv6, bit 1 = plaintext.
fn connection(bytes: &[u8]) -> (Option<SpiffeId>, SocketAddr, SocketAddr) {
    let byte = |index: usize| bytes.get(index).copied().unwrap_or(0);
    let flags = byte(0);
    let (source_ip, destination_ip, rest): (IpAddr, IpAddr, usize) = if flags & 1 == 1 {
        let address = |offset: usize| {
            let mut octets = [0u8; 16];
            for (index, octet) in octets.iter_mut().enumerate() {
                *octet = byte(offset + index);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        };
        (address(1), address(17), 33)
    } else {
        let address =
            |offset: usize| IpAddr::V4(Ipv4Addr::new(byte(offset), byte(offset + 1), byte(offset + 2), byte(offset + 3)));
        (address(1), address(5), 9)
    };
    let source_port = u16::from_be_bytes([byte(rest), byte(rest + 1)]);
    let destination_port = u16::from_be_bytes([byte(rest + 2), byte(rest + 3)]);
    let identity = if flags & 2 == 2 {
        None
    } else {
        bytes
            .get(rest + 4..)
            .and_then(|text| std::str::from_utf8(text).ok())
            .and_then(|text| text.parse::<SpiffeId>().ok())
    };
    (
        identity,
        SocketAddr::new(source_ip, source_port),
        SocketAddr::new(destination_ip, destination_port),
    )
}
