//! `#[repr(C)]` keys and values of the pinned maps. Every padding byte is an explicit field so
//! that keys hash the same on both sides; userspace always zeroes it.
//!
//! Addresses are 16 bytes in network order: an IPv4 address fills the first 4 bytes and the
//! rest is zero; `family` tells which (`AF_INET` = 2, `AF_INET6` = 10). Ports are host order.

/// `family` value of an IPv4 address (`AF_INET`).
pub const FAMILY_IPV4: u16 = 2;
/// `family` value of an IPv6 address (`AF_INET6`).
pub const FAMILY_IPV6: u16 = 10;

/// Value of `pods`. Written by userspace when a pod is enrolled; read by every kernel program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodRecord {
    /// Slot of this pod in `stats`, below [`crate::maps::MAX_PODS`]; allocated by userspace.
    pub index: u32,
    /// [`POD_FLAG_CAPTURED`] and [`POD_FLAG_HBONE`] bits.
    pub flags: u32,
    /// The pod's IPv4 address, network order; all zero when the pod has none. The connect
    /// hooks bind a redirected socket to it, so the outbound listener sees the pod as the peer.
    pub ipv4: [u8; 4],
    /// The pod's IPv6 address, network order; all zero when the pod has none.
    pub ipv6: [u8; 16],
}

/// [`PodRecord::flags`]: the pod's TCP is captured (outbound connects and inbound plaintext).
pub const POD_FLAG_CAPTURED: u32 = 1 << 0;
/// [`PodRecord::flags`]: the pod accepts HBONE on port 15008.
pub const POD_FLAG_HBONE: u32 = 1 << 1;

/// Key of `workloads`: one IP of an enrolled pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WorkloadKey {
    /// The pod IP, network order (IPv4 in the first 4 bytes).
    pub address: [u8; 16],
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u16,
    /// Always zero.
    pub padding: u16,
}

/// Value of `workloads`. Written by userspace on enrollment; read by operators.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkloadRecord {
    /// Cookie of the pod's network namespace (the `pods` key).
    pub netns_cookie: u64,
    /// Interface index, inside the pod netns, where the TC ingress program is attached.
    pub ifindex: u32,
    /// Copy of the pod's [`PodRecord::flags`].
    pub flags: u32,
}

/// Value of `connect_dst` and `orig_dst`: where a redirected connection was going.
/// Written by the connect hooks (then moved by `sockops`); read by `getsockopt` and userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginalDestination {
    /// Cookie of the network namespace of the socket that connected.
    pub netns_cookie: u64,
    /// Cookie of the socket that connected (the application's socket).
    pub socket_cookie: u64,
    /// Destination address the application asked for, network order.
    pub address: [u8; 16],
    /// Destination port the application asked for, host order.
    pub port: u16,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u16,
    /// Always zero.
    pub padding: u32,
}

/// Key of `orig_dst`: a redirected connection as both of its ends see it inside one pod netns.
/// Written by `sockops` from the application's socket; looked up from the accepted socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnectionKey {
    /// Cookie of the pod's network namespace (each pod has its own loopback).
    pub netns_cookie: u64,
    /// The application's local address (the accepted socket's peer), network order.
    pub client_address: [u8; 16],
    /// The outbound listener's address (127.0.0.1 or ::1), network order.
    pub proxy_address: [u8; 16],
    /// The application's local port, host order.
    pub client_port: u16,
    /// The outbound listener's port, host order.
    pub proxy_port: u16,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u16,
    /// Always zero.
    pub padding: u16,
}

/// Value of `config` at index 0. Written by userspace at start and by `ztunnel config`; read by
/// the kernel programs (only `fail_mode`; ports and marks are echoed for operators and are the
/// constants the programs were built with).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigRecord {
    /// [`crate::constants::BYPASS_MARK`].
    pub bypass_mark: u32,
    /// [`crate::constants::UPSTREAM_MARK`].
    pub upstream_mark: u32,
    /// [`crate::constants::OUTBOUND_PORT`].
    pub outbound_port: u16,
    /// [`crate::constants::INBOUND_PLAINTEXT_PORT`].
    pub inbound_plaintext_port: u16,
    /// [`crate::constants::HBONE_PORT`].
    pub hbone_port: u16,
    /// Always zero.
    pub padding: u16,
    /// [`FAIL_CLOSED`] (the zero value, so an unwritten config is fail-closed) or [`FAIL_OPEN`].
    pub fail_mode: u32,
    /// Most verbose kernel log record the programs emit: [`LOG_LEVEL_OFF`] (the zero value)
    /// up to [`LOG_LEVEL_DEBUG`]. Read by every program before logging, so it applies at once.
    pub log_level: u32,
}

/// [`ConfigRecord::fail_mode`]: with no ztunnel listener in the pod, captured traffic is refused.
pub const FAIL_CLOSED: u32 = 0;
/// [`ConfigRecord::fail_mode`]: with no ztunnel listener in the pod, traffic goes direct.
pub const FAIL_OPEN: u32 = 1;

/// [`ConfigRecord::log_level`]: the kernel programs log nothing.
pub const LOG_LEVEL_OFF: u32 = 0;
/// [`ConfigRecord::log_level`]: errors only.
pub const LOG_LEVEL_ERROR: u32 = 1;
/// [`ConfigRecord::log_level`]: warnings and errors (e.g. a full original-destination map).
pub const LOG_LEVEL_WARN: u32 = 2;
/// [`ConfigRecord::log_level`]: also informational records.
pub const LOG_LEVEL_INFO: u32 = 3;
/// [`ConfigRecord::log_level`]: also one record per redirected or refused connection.
pub const LOG_LEVEL_DEBUG: u32 = 4;

/// Value of `stats` (per CPU, per pod index). Written by the kernel; summed by userspace.
/// Outbound counts connects, inbound counts connection-opening SYNs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodCounters {
    /// Outbound connects rewritten to the in-pod outbound listener.
    pub outbound_redirected: u64,
    /// Outbound connects let through (bypass mark, or no listener and fail-open).
    pub outbound_passed: u64,
    /// Outbound connects refused (no listener and fail-closed).
    pub outbound_refused: u64,
    /// Inbound SYNs assigned to the in-pod inbound plaintext listener.
    pub inbound_redirected: u64,
    /// Inbound SYNs let through (HBONE and ztunnel ports, or no listener and fail-open).
    pub inbound_passed: u64,
    /// Inbound SYNs dropped (no listener and fail-closed).
    pub inbound_refused: u64,
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;

    // SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers and integer arrays, and
    // every padding byte is an explicit field, so any bit pattern is valid and none is uninit.
    unsafe impl aya::Pod for PodRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for WorkloadKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for WorkloadRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for OriginalDestination {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ConnectionKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ConfigRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PodCounters {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};

    use super::*;

    /// The sizes and alignments below are what the kernel sees (BTF of the `bpfel` object);
    /// a change here is a change of the pinned-map ABI and needs a migration.
    #[test]
    fn layouts_match_the_kernel_contract() {
        assert_eq!((size_of::<PodRecord>(), align_of::<PodRecord>()), (28, 4));
        assert_eq!(
            (size_of::<WorkloadKey>(), align_of::<WorkloadKey>()),
            (20, 2)
        );
        assert_eq!(
            (size_of::<WorkloadRecord>(), align_of::<WorkloadRecord>()),
            (16, 8)
        );
        assert_eq!(
            (
                size_of::<OriginalDestination>(),
                align_of::<OriginalDestination>()
            ),
            (40, 8)
        );
        assert_eq!(
            (size_of::<ConnectionKey>(), align_of::<ConnectionKey>()),
            (48, 8)
        );
        assert_eq!(
            (size_of::<ConfigRecord>(), align_of::<ConfigRecord>()),
            (24, 4)
        );
        assert_eq!(
            (size_of::<PodCounters>(), align_of::<PodCounters>()),
            (48, 8)
        );
    }

    #[test]
    fn no_implicit_padding() {
        assert_eq!(offset_of!(OriginalDestination, address), 16);
        assert_eq!(offset_of!(OriginalDestination, padding), 36);
        assert_eq!(offset_of!(ConnectionKey, client_port), 40);
        assert_eq!(offset_of!(ConnectionKey, padding), 46);
        assert_eq!(offset_of!(ConfigRecord, fail_mode), 16);
        assert_eq!(offset_of!(WorkloadKey, padding), 18);
        assert_eq!(offset_of!(PodRecord, ipv4), 8);
        assert_eq!(offset_of!(PodRecord, ipv6), 12);
    }

    #[test]
    fn zeroed_config_is_fail_closed() {
        assert_eq!(ConfigRecord::default().fail_mode, FAIL_CLOSED);
    }
}
