//! The capture side of a node, from start to stop: load or adopt the kernel programs and their
//! pins, settle the node's capture mode, re-attach every enrolled pod's capture, and forget pods
//! whose netns disappeared. Nothing here opens a listener: serving pods is the proxy's work.

use std::path::PathBuf;

use crate::{
    ebpf::{
        EbpfError, LoadedPrograms, PinLayout, PinnedMaps,
        loader::{MapSizes, kernel_has_tcx, remove_cgroup_links},
        map_layout::IncompatibleMaps,
        maps::{FailMode, KernelLogLevel, pod_capacity},
    },
    inpod::{
        InpodError,
        capture::{CaptureMode, CaptureRequest, decide},
        enroll::{apply_capture, forget_pod, still_exists, write_map_entries},
        netns::Netns,
        state::{EnrolledPod, StateLock, read_enrolled},
    },
};

/// The capture agent's settings (from the command line).
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// Where maps and links are pinned.
    pub layout: PinLayout,
    /// cgroup-v2 directory the cgroup programs attach to.
    pub cgroup: PathBuf,
    /// Directory of the enrolled set.
    pub run_dir: PathBuf,
    /// Behaviour for enrolled pods while no proxy serves them.
    pub fail_mode: FailMode,
    /// Most verbose record the kernel programs emit.
    pub kernel_log_level: KernelLogLevel,
    /// Sizes of maps this agent creates.
    pub map_sizes: MapSizes,
    /// eBPF, iptables, or eBPF with the iptables fallback.
    pub capture: CaptureRequest,
}

/// Loads or adopts the programs, writes the node config, rebuilds recreated maps from the
/// enrolled set, settles the capture mode and re-attaches every enrolled pod's capture.
/// Returns the mode and the loaded programs (their kernel log ring buffer is still to be read).
/// Minimum kernel 6.6.
pub fn prepare(config: &CaptureConfig) -> Result<(CaptureMode, LoadedPrograms), InpodError> {
    let mut programs =
        LoadedPrograms::load_with(&config.layout, config.map_sizes, IncompatibleMaps::Recreate)?;
    let capacity = pod_capacity(&config.layout)?;
    if capacity == config.map_sizes.max_pods {
        tracing::info!(max_pods = capacity, "pods map capacity");
    } else {
        tracing::warn!(
            pinned_capacity = capacity,
            requested = config.map_sizes.max_pods,
            pods_map = %config.layout.map(ztunnel_common::maps::PODS_MAP).display(),
            "the pinned pods map keeps the capacity it was created with; --max-pods applies once the pinned maps are removed (drain the node, then delete the pins)"
        );
    }
    let mut maps = PinnedMaps::open(&config.layout)?;
    maps.write_config(
        config.fail_mode.record_value(),
        config.kernel_log_level.record_value(),
    )?;
    // Before any link runs the new programs: they must find every enrolled pod in fresh maps.
    if !programs.recreated_maps().is_empty() {
        let set = read_enrolled(&config.run_dir)
            .map_err(|source| InpodError::state(&config.run_dir, source))?;
        for pod in &set.pods {
            write_map_entries(&mut maps, pod)?;
        }
        tracing::warn!(maps = ?programs.recreated_maps(), pods = set.pods.len(), "pods and workloads rebuilt from the enrolled set after maps were recreated; whatever else the recreated maps held (counters, in-flight original destinations) starts empty");
    }
    let capture = choose_capture(&mut programs, config)?;
    adopt_enrolled_pods(&mut programs, config, capture)?;
    Ok((capture, programs))
}

/// Attaches the cgroup programs unless iptables capture is asked for, and settles the node's
/// capture mode ([`decide`]). In iptables mode no cgroup link of ours stays pinned.
fn choose_capture(
    programs: &mut LoadedPrograms,
    config: &CaptureConfig,
) -> Result<CaptureMode, InpodError> {
    let hooks = match config.capture {
        CaptureRequest::Iptables => None,
        CaptureRequest::Ebpf | CaptureRequest::Auto => {
            let attached = if kernel_has_tcx() {
                programs.attach_cgroup_programs(&config.cgroup)
            } else {
                Err(EbpfError::Io {
                    action: "attach the pods' TC ingress programs".into(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::Unsupported,
                        "this kernel has no TCX (needs Linux 6.6)",
                    ),
                })
            };
            Some(attached.map(|outcomes| {
                for (program, outcome) in outcomes {
                    tracing::info!(program, ?outcome, cgroup = %config.cgroup.display(), "cgroup program in place");
                }
            }))
        }
    };
    let mode = decide(config.capture, hooks)?;
    if mode == CaptureMode::Iptables {
        let removed = remove_cgroup_links(&config.layout)?;
        tracing::info!(
            removed_cgroup_links = removed,
            "capture by iptables rules in each pod netns (REDIRECT to 15001/15006)"
        );
    }
    Ok(mode)
}

/// Re-attaches (adopts) the TC link of every enrolled pod and forgets pods whose netns is gone,
/// along with pod pins that no enrolled pod owns.
fn adopt_enrolled_pods(
    programs: &mut LoadedPrograms,
    config: &CaptureConfig,
    capture: CaptureMode,
) -> Result<(), InpodError> {
    let lock = StateLock::acquire(&config.run_dir)
        .map_err(|source| InpodError::state(&config.run_dir, source))?;
    let mut set = lock
        .load()
        .map_err(|source| InpodError::state(&config.run_dir, source))?;
    set.capture = capture;
    let mut kept = Vec::new();
    for mut pod in set.pods.drain(..) {
        if !still_exists(&pod) {
            tracing::info!(pod = %pod.name, namespace = %pod.namespace, netns = %pod.netns.display(), "enrolled pod's netns is gone; removing its entries and pins");
            forget_pod(&config.layout, &pod)?;
            continue;
        }
        let netns = Netns::open(&pod.netns).map_err(|source| InpodError::Netns {
            path: pod.netns.clone(),
            source,
        })?;
        let (_, outcome) = apply_capture(
            programs,
            &netns,
            &pod.interface,
            pod.netns_cookie,
            capture,
            Some(pod.capture),
        )?;
        pod.capture = capture;
        if let Err(error) = crate::inpod::routing::install_upstream_routing(&netns) {
            tracing::warn!(pod = %pod.name, namespace = %pod.namespace, %error, "cannot install the in-pod upstream routing; the application will not see client addresses");
        }
        tracing::info!(pod = %pod.name, namespace = %pod.namespace, capture = ?capture, tc = %outcome, "enrolled pod adopted");
        kept.push(pod);
    }
    set.pods = kept;
    remove_orphan_pod_pins(&config.layout, &set.pods)?;
    lock.save(&set)
        .map_err(|source| InpodError::state(&config.run_dir, source))
}

/// Forgets enrolled pods whose netns path no longer opens (or is another namespace now); the
/// next reconcile closes their listeners.
pub fn forget_gone_pods(config: &CaptureConfig) -> Result<(), InpodError> {
    let lock = StateLock::acquire(&config.run_dir)
        .map_err(|source| InpodError::state(&config.run_dir, source))?;
    let mut set = lock
        .load()
        .map_err(|source| InpodError::state(&config.run_dir, source))?;
    let before = set.pods.len();
    let mut kept = Vec::with_capacity(before);
    for pod in set.pods.drain(..) {
        if still_exists(&pod) {
            kept.push(pod);
            continue;
        }
        tracing::info!(pod = %pod.name, namespace = %pod.namespace, netns = %pod.netns.display(), "enrolled pod's netns is gone; removing its entries and pins");
        forget_pod(&config.layout, &pod)?;
    }
    if kept.len() == before {
        return Ok(());
    }
    set.pods = kept;
    lock.save(&set)
        .map_err(|source| InpodError::state(&config.run_dir, source))
}

/// Pod pin directories (and `pods` entries) under our root that no enrolled pod owns.
fn remove_orphan_pod_pins(layout: &PinLayout, pods: &[EnrolledPod]) -> Result<(), InpodError> {
    let owned = |cookie: u64| pods.iter().any(|pod| pod.netns_cookie == cookie);
    let entries = std::fs::read_dir(layout.pods_dir()).map_err(|source| InpodError::Io {
        action: format!("list {}", layout.pods_dir().display()),
        source,
    })?;
    for entry in entries.flatten() {
        let Some(cookie) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u64>().ok())
        else {
            continue;
        };
        if !owned(cookie) {
            tracing::info!(
                netns_cookie = cookie,
                "removing pins of a pod that is no longer enrolled"
            );
            crate::ebpf::loader::remove_pod_pins(layout, cookie)?;
        }
    }
    let mut maps = PinnedMaps::open(layout)?;
    let stale: Vec<u64> = maps
        .pods
        .keys()
        .filter_map(Result::ok)
        .filter(|cookie| !owned(*cookie))
        .collect();
    for cookie in stale {
        let _ = maps.pods.remove(&cookie);
    }
    Ok(())
}
