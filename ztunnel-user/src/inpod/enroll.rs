//! Enrolling and unenrolling a pod: the library API the CLI, the daemon and (later) the CNI
//! plugin's Unix-socket protocol call.
//!
//! Enrollment = `pods` + `workloads` entries, the node's kind of capture in the pod netns (a
//! pinned TCX link, or iptables rules: [`super::capture`]) and a record in the enrolled set;
//! the daemon then opens the pod's listeners. Until it does, the pod is fail-closed (or
//! fail-open if the node is configured so; iptables capture is always fail-closed: the
//! redirect finds no listener).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use ztunnel_common::{
    POD_FLAG_CAPTURED, POD_FLAG_HBONE, WorkloadRecord,
    maps::{PODS_MAP, WORKLOADS_MAP},
};

use super::{
    InpodError,
    capture::CaptureMode,
    iptables::{install_iptables_capture, remove_iptables_capture},
    netns::Netns,
    routing::{install_upstream_routing, remove_upstream_routing},
    state::{EnrolledPod, StateLock},
};
use crate::ebpf::{
    EbpfError, LoadedPrograms, PinLayout, PinnedMaps,
    loader::{interface_index, remove_pod_pins},
    maps::{pod_capacity, pod_record, workload_key},
};

/// What the caller knows about a pod to enroll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    /// Kubernetes pod name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Path of the pod's netns file (`/var/run/netns/<name>` or `/proc/<pid>/ns/net`).
    pub netns: PathBuf,
    /// The pod's IPs.
    pub ips: Vec<IpAddr>,
    /// The pod's interface inside its netns.
    pub interface: String,
}

/// Which pod to unenroll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodSelector {
    /// By netns path.
    Netns(PathBuf),
    /// By Kubernetes namespace and name.
    Name {
        /// Kubernetes namespace.
        namespace: String,
        /// Pod name.
        name: String,
    },
}

impl PodSelector {
    fn matches(&self, pod: &EnrolledPod) -> bool {
        match self {
            Self::Netns(path) => &pod.netns == path,
            Self::Name { namespace, name } => &pod.namespace == namespace && &pod.name == name,
        }
    }
}

/// Enrolls (or re-enrolls, idempotently) a pod. Minimum kernel 6.6.
pub fn enroll(
    programs: &mut LoadedPrograms,
    run_dir: &Path,
    spec: &PodSpec,
) -> Result<EnrolledPod, InpodError> {
    if spec.ips.is_empty() {
        return Err(InpodError::Invalid(format!(
            "pod {}/{} has no IPs (pass --ip)",
            spec.namespace, spec.name
        )));
    }
    let lock = StateLock::acquire(run_dir).map_err(|source| InpodError::state(run_dir, source))?;
    let mut set = lock
        .load()
        .map_err(|source| InpodError::state(run_dir, source))?;
    let netns = Netns::open(&spec.netns).map_err(|source| InpodError::Netns {
        path: spec.netns.clone(),
        source,
    })?;
    let netns_cookie = netns.cookie().map_err(|source| InpodError::Netns {
        path: spec.netns.clone(),
        source,
    })?;
    let existing = set
        .pods
        .iter()
        .position(|pod| pod.netns_cookie == netns_cookie);
    let capacity = pod_capacity(programs.layout())?;
    let index = match existing {
        Some(position) => set.pods[position].index,
        None => set.free_index(),
    };
    // A new pod needs a free `pods` entry and a `stats` slot below the capacity; checked before
    // anything is attached, so a refused pod leaves nothing behind.
    if existing.is_none() && (set.pods.len() >= capacity as usize || index >= capacity) {
        return Err(InpodError::PodCapacity {
            pod: format!("{}/{}", spec.namespace, spec.name),
            capacity,
            bpffs_root: programs.layout().root().to_owned(),
        });
    }
    let previous = existing.map(|position| set.pods[position].capture);
    let (ifindex, outcome) = apply_capture(
        programs,
        &netns,
        &spec.interface,
        netns_cookie,
        set.capture,
        previous,
    )?;
    install_upstream_routing(&netns).map_err(|source| InpodError::Io {
        action: format!(
            "install the upstream routing (fwmark rule, local table) in netns {}",
            spec.netns.display()
        ),
        source,
    })?;
    let mut maps = PinnedMaps::open(programs.layout())?;
    if existing.is_none() {
        maps.reset_pod_counters(index)?;
    }
    let pod = EnrolledPod {
        name: spec.name.clone(),
        namespace: spec.namespace.clone(),
        netns: spec.netns.clone(),
        ips: spec.ips.clone(),
        interface: spec.interface.clone(),
        ifindex,
        netns_cookie,
        index,
        capture: set.capture,
    };
    write_map_entries(&mut maps, &pod)?;
    match existing {
        Some(position) => set.pods[position] = pod.clone(),
        None => set.pods.push(pod.clone()),
    }
    lock.save(&set)
        .map_err(|source| InpodError::state(run_dir, source))?;
    tracing::info!(pod = %pod.name, namespace = %pod.namespace, netns_cookie, index, ifindex, capture = ?set.capture, tc = %outcome, "pod enrolled");
    Ok(pod)
}

/// Writes an enrolled pod's `workloads` entries (one per IP) and its `pods` entry, the one the
/// kernel programs look for first.
pub fn write_map_entries(maps: &mut PinnedMaps, pod: &EnrolledPod) -> Result<(), EbpfError> {
    let flags = POD_FLAG_CAPTURED | POD_FLAG_HBONE;
    for ip in &pod.ips {
        let record = WorkloadRecord {
            netns_cookie: pod.netns_cookie,
            ifindex: pod.ifindex,
            flags,
        };
        maps.workloads
            .insert(workload_key(*ip), record, 0)
            .map_err(|source| EbpfError::map(WORKLOADS_MAP, "write", source))?;
    }
    let record = pod_record(pod.index, flags, &pod.ips);
    maps.pods
        .insert(pod.netns_cookie, record, 0)
        .map_err(|source| EbpfError::map(PODS_MAP, "write", source))
}

/// Puts the pod under `mode`'s capture — its pinned TCX ingress link, or its iptables rules —
/// and removes the other kind if the pod had it (`previous`). Returns the interface index and
/// the TC hook outcome, for the log.
pub fn apply_capture(
    programs: &mut LoadedPrograms,
    netns: &Netns,
    interface: &str,
    netns_cookie: u64,
    mode: CaptureMode,
    previous: Option<CaptureMode>,
) -> Result<(u32, String), InpodError> {
    let io_error = |action: String| {
        move |source| InpodError::Io {
            action: format!("{action} in netns {}", netns.path().display()),
            source,
        }
    };
    match mode {
        CaptureMode::Ebpf => {
            let (ifindex, outcome) = programs.attach_tc_ingress(netns, interface, netns_cookie)?;
            if previous == Some(CaptureMode::Iptables) {
                remove_iptables_capture(netns)
                    .map_err(io_error("remove the iptables capture rules".into()))?;
            }
            Ok((ifindex, format!("{outcome:?}")))
        }
        CaptureMode::Iptables => {
            let name = interface.to_owned();
            let ifindex = netns
                .run(move || interface_index(&name))
                .map_err(io_error(format!("find interface {interface}")))?;
            // A TCX link left from eBPF mode would capture inbound traffic a second time.
            remove_pod_pins(programs.layout(), netns_cookie)?;
            install_iptables_capture(netns)
                .map_err(io_error("install the iptables capture rules".into()))?;
            Ok((ifindex, "none (iptables capture)".to_owned()))
        }
    }
}

/// Unenrolls a pod: map entries, pinned TC link and enrolled-set record. Returns the pod, or
/// `None` if no enrolled pod matched.
pub fn unenroll(
    layout: &PinLayout,
    run_dir: &Path,
    selector: &PodSelector,
) -> Result<Option<EnrolledPod>, InpodError> {
    let lock = StateLock::acquire(run_dir).map_err(|source| InpodError::state(run_dir, source))?;
    let mut set = lock
        .load()
        .map_err(|source| InpodError::state(run_dir, source))?;
    let Some(position) = set.pods.iter().position(|pod| selector.matches(pod)) else {
        return Ok(None);
    };
    let pod = set.pods.remove(position);
    forget_pod(layout, &pod)?;
    lock.save(&set)
        .map_err(|source| InpodError::state(run_dir, source))?;
    tracing::info!(pod = %pod.name, namespace = %pod.namespace, netns_cookie = pod.netns_cookie, "pod unenrolled");
    Ok(Some(pod))
}

/// Removes a pod's map entries and pins (not its enrolled-set record).
pub fn forget_pod(layout: &PinLayout, pod: &EnrolledPod) -> Result<(), InpodError> {
    let mut maps = PinnedMaps::open(layout)?;
    let _ = maps.pods.remove(&pod.netns_cookie);
    for ip in &pod.ips {
        let _ = maps.workloads.remove(&workload_key(*ip));
    }
    maps.reset_pod_counters(pod.index)?;
    remove_pod_pins(layout, pod.netns_cookie)?;
    // Only in the very namespace that was enrolled: a reused path is someone else's netns.
    if let Ok(netns) = Netns::open(&pod.netns)
        && netns
            .cookie()
            .is_ok_and(|cookie| cookie == pod.netns_cookie)
        && let Err(error) = remove_upstream_routing(&netns)
    {
        tracing::warn!(pod = %pod.name, namespace = %pod.namespace, %error, "cannot remove the in-pod upstream routing");
    }
    if pod.capture == CaptureMode::Iptables
        && let Ok(netns) = Netns::open(&pod.netns)
        && netns
            .cookie()
            .is_ok_and(|cookie| cookie == pod.netns_cookie)
        && let Err(error) = remove_iptables_capture(&netns)
    {
        tracing::warn!(pod = %pod.name, namespace = %pod.namespace, %error, "cannot remove the in-pod iptables capture rules");
    }
    Ok(())
}

/// Whether the pod's netns still exists and is the same namespace that was enrolled.
pub fn still_exists(pod: &EnrolledPod) -> bool {
    Netns::open(&pod.netns)
        .and_then(|netns| netns.cookie())
        .is_ok_and(|cookie| cookie == pod.netns_cookie)
}
