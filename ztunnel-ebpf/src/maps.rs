//! Every map the kernel programs use. Names, key and value types come from `ztunnel-common`
//! (`ztunnel_common::maps` has the name constants; the literals below must match them).

use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use ztunnel_common::{
    ConfigRecord, ConnectionKey, OriginalDestination, PodCounters, PodRecord, WorkloadKey,
    WorkloadRecord,
    maps::{MAX_PODS, MAX_TRACKED_CONNECTIONS, MAX_WORKLOADS},
};

/// Enrolled pods by netns cookie (`ztunnel_common::maps::PODS_MAP`).
#[btf_map(name = "pods")]
pub static PODS: HashMap<u64, PodRecord, { MAX_PODS as usize }> = HashMap::new();

/// Pod IPs (`ztunnel_common::maps::WORKLOADS_MAP`). Userspace-maintained; read by the connect
/// hooks to tell a pod's own addresses (`return_path.rs`).
#[btf_map(name = "workloads")]
pub static WORKLOADS: HashMap<WorkloadKey, WorkloadRecord, { MAX_WORKLOADS as usize }> =
    HashMap::new();

/// Original destination by the connecting socket's cookie
/// (`ztunnel_common::maps::CONNECT_DESTINATIONS_MAP`).
#[btf_map(name = "connect_dst")]
pub static CONNECT_DESTINATIONS: LruHashMap<
    u64,
    OriginalDestination,
    { MAX_TRACKED_CONNECTIONS as usize },
> = LruHashMap::new();

/// Original destination by (netns cookie, 4-tuple)
/// (`ztunnel_common::maps::ORIGINAL_DESTINATIONS_MAP`).
#[btf_map(name = "orig_dst")]
pub static ORIGINAL_DESTINATIONS: LruHashMap<
    ConnectionKey,
    OriginalDestination,
    { MAX_TRACKED_CONNECTIONS as usize },
> = LruHashMap::new();

/// Node configuration at index 0 (`ztunnel_common::maps::CONFIG_MAP`).
#[btf_map(name = "config")]
pub static CONFIG: Array<ConfigRecord, 1> = Array::new();

/// Per-CPU counters by pod index (`ztunnel_common::maps::STATS_MAP`).
#[btf_map(name = "stats")]
pub static STATS: PerCpuArray<PodCounters, { MAX_PODS as usize }> = PerCpuArray::new();
