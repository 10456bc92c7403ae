//! Names and sizes of the pinned BPF maps, each defined once.
//!
//! The kernel side declares each map with `#[btf_map(name = "...")]` using the same literal;
//! userspace pins every map at `<bpffs root>/<name>`.

/// `pods`: netns cookie (`u64`) → [`crate::PodRecord`]. Written by userspace on enrollment;
/// read by every kernel program to decide whether a socket or packet belongs to an enrolled pod.
pub const PODS_MAP: &str = "pods";
/// `workloads`: [`crate::WorkloadKey`] (pod IP) → [`crate::WorkloadRecord`]. Written by
/// userspace on enrollment; read by operators and by the connect hooks (whether an address is
/// the pod's own).
pub const WORKLOADS_MAP: &str = "workloads";
/// `connect_dst`: socket cookie (`u64`) → [`crate::OriginalDestination`], LRU. Written by the
/// connect hooks; read and deleted by `sockops` when the connection is established.
pub const CONNECT_DESTINATIONS_MAP: &str = "connect_dst";
/// `orig_dst`: [`crate::ConnectionKey`] → [`crate::OriginalDestination`], LRU. Written by
/// `sockops`; read by `getsockopt(SO_ORIGINAL_DST)` and by userspace; deleted on close.
pub const ORIGINAL_DESTINATIONS_MAP: &str = "orig_dst";
/// `config`: one [`crate::ConfigRecord`] at index 0. Written by userspace; read by the kernel.
pub const CONFIG_MAP: &str = "config";
/// `stats`: per-CPU [`crate::PodCounters`] indexed by [`crate::PodRecord::index`]. Written by
/// the kernel; read (summed over CPUs) by `ztunnel inspect stats`.
pub const STATS_MAP: &str = "stats";

/// Every map name, for pinning, adoption and leftover checks.
pub const ALL_MAPS: [&str; 6] = [
    PODS_MAP,
    WORKLOADS_MAP,
    CONNECT_DESTINATIONS_MAP,
    ORIGINAL_DESTINATIONS_MAP,
    CONFIG_MAP,
    STATS_MAP,
];

/// Capacity of `pods`, `stats` and the largest pod index plus one.
pub const MAX_PODS: u32 = 1024;
/// Capacity of `workloads` (a pod has at most a few IPs).
pub const MAX_WORKLOADS: u32 = 4096;
/// Capacity of each original-destination LRU map.
pub const MAX_TRACKED_CONNECTIONS: u32 = 65536;

/// Program names (the kernel function names) the loader looks up and attaches.
pub mod programs {
    /// `cgroup/connect4` (`ztunnel-ebpf/src/connect.rs`).
    pub const CONNECT4: &str = "connect4";
    /// `cgroup/connect6` (`ztunnel-ebpf/src/connect.rs`).
    pub const CONNECT6: &str = "connect6";
    /// `sockops` (`ztunnel-ebpf/src/sockops.rs`).
    pub const SOCKOPS: &str = "sockops_rekey";
    /// `cgroup/getsockopt` (`ztunnel-ebpf/src/getsockopt.rs`).
    pub const GETSOCKOPT: &str = "getsockopt";
    /// `cgroup/getpeername4` (`ztunnel-ebpf/src/getpeername.rs`).
    pub const GETPEERNAME4: &str = "getpeername4";
    /// `cgroup/getpeername6` (`ztunnel-ebpf/src/getpeername.rs`).
    pub const GETPEERNAME6: &str = "getpeername6";
    /// `cgroup/bind4` (`ztunnel-ebpf/src/bind.rs`).
    pub const BIND4: &str = "bind4";
    /// `cgroup/bind6` (`ztunnel-ebpf/src/bind.rs`).
    pub const BIND6: &str = "bind6";
    /// TC ingress classifier (`ztunnel-ebpf/src/tc_ingress.rs`).
    pub const TC_INGRESS: &str = "tc_ingress";
}

/// Name of aya-log's ring buffer; pinned too so every loader shares one log stream.
pub const LOG_RING_BUFFER_MAP: &str = "AYA_LOGS";
