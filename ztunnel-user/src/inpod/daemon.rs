//! `ztunnel daemon`: load or adopt the kernel programs, keep every enrolled pod's listeners
//! open, and follow the enrolled set as pods come and go. SIGTERM/SIGINT close the listeners
//! (the kernel then applies the fail mode) and keep every pin, so capture survives.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use tokio::signal::unix::{SignalKind, signal};

use super::{
    InpodError,
    enroll::{forget_pod, still_exists},
    handler::{PodContext, PodTrafficHandler},
    listeners::PodListeners,
    netns::Netns,
    socket_factory::PodSocketFactory,
    state::{EnrolledPod, StateLock, read_enrolled},
};
use crate::ebpf::{LoadedPrograms, PinLayout, PinnedMaps, maps::FailMode};

/// How often the daemon re-reads the enrolled set for pods enrolled or removed by the CLI.
const RECONCILE_INTERVAL: Duration = Duration::from_millis(200);

/// The daemon's settings (from the command line).
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Where maps and links are pinned.
    pub layout: PinLayout,
    /// cgroup-v2 directory the cgroup programs attach to.
    pub cgroup: PathBuf,
    /// Directory of the enrolled set.
    pub run_dir: PathBuf,
    /// Behaviour for enrolled pods while ztunnel is not serving them.
    pub fail_mode: FailMode,
}

/// Runs until SIGTERM or SIGINT. Minimum kernel 6.6.
pub async fn run(config: DaemonConfig, handler: Arc<dyn PodTrafficHandler>) -> Result<(), InpodError> {
    let mut programs = LoadedPrograms::load(&config.layout)?;
    let mut maps = PinnedMaps::open(&config.layout)?;
    maps.write_config(config.fail_mode.record_value(), 0)?;
    for (program, outcome) in programs.attach_cgroup_programs(&config.cgroup)? {
        tracing::info!(program, ?outcome, cgroup = %config.cgroup.display(), "cgroup program in place");
    }
    let _kernel_logs = programs.take_logger().map(|logger| tokio::spawn(crate::ebpf::logs::forward(logger)));
    adopt_enrolled_pods(&mut programs, &config)?;
    let maps = Arc::new(maps);
    let mut serving: HashMap<u64, PodListeners> = HashMap::new();
    reconcile(&config, &handler, &maps, &mut serving);
    tracing::info!(bpffs_root = %config.layout.root().display(), fail_mode = ?config.fail_mode, pods = serving.len(), "ztunnel daemon ready");

    let signal_error = |source| InpodError::Io { action: "install signal handlers".into(), source };
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let mut ticker = tokio::time::interval(RECONCILE_INTERVAL);
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = ticker.tick() => reconcile(&config, &handler, &maps, &mut serving),
        }
    }
    let pods = serving.len();
    drop(serving);
    tracing::info!(pods, fail_mode = ?config.fail_mode, "ztunnel daemon stopped: in-pod listeners closed, pins kept");
    Ok(())
}

/// Re-attaches (adopts) the TC link of every enrolled pod and forgets pods whose netns is gone,
/// along with pod pins that no enrolled pod owns.
fn adopt_enrolled_pods(programs: &mut LoadedPrograms, config: &DaemonConfig) -> Result<(), InpodError> {
    let lock = StateLock::acquire(&config.run_dir).map_err(|source| InpodError::state(&config.run_dir, source))?;
    let mut set = lock.load().map_err(|source| InpodError::state(&config.run_dir, source))?;
    let mut kept = Vec::new();
    for pod in set.pods.drain(..) {
        if !still_exists(&pod) {
            tracing::info!(pod = %pod.name, namespace = %pod.namespace, netns = %pod.netns.display(), "enrolled pod's netns is gone; removing its entries and pins");
            forget_pod(&config.layout, &pod)?;
            continue;
        }
        let netns = Netns::open(&pod.netns).map_err(|source| InpodError::Netns { path: pod.netns.clone(), source })?;
        let (_, outcome) = programs.attach_tc_ingress(&netns, &pod.interface, pod.netns_cookie)?;
        tracing::info!(pod = %pod.name, namespace = %pod.namespace, tc = ?outcome, "enrolled pod adopted");
        kept.push(pod);
    }
    set.pods = kept;
    remove_orphan_pod_pins(&config.layout, &set.pods)?;
    lock.save(&set).map_err(|source| InpodError::state(&config.run_dir, source))
}

/// Pod pin directories (and `pods` entries) under our root that no enrolled pod owns.
fn remove_orphan_pod_pins(layout: &PinLayout, pods: &[EnrolledPod]) -> Result<(), InpodError> {
    let owned = |cookie: u64| pods.iter().any(|pod| pod.netns_cookie == cookie);
    let entries = std::fs::read_dir(layout.pods_dir()).map_err(|source| InpodError::Io {
        action: format!("list {}", layout.pods_dir().display()),
        source,
    })?;
    for entry in entries.flatten() {
        let Some(cookie) = entry.file_name().to_str().and_then(|name| name.parse::<u64>().ok()) else { continue };
        if !owned(cookie) {
            tracing::info!(netns_cookie = cookie, "removing pins of a pod that is no longer enrolled");
            crate::ebpf::loader::remove_pod_pins(layout, cookie)?;
        }
    }
    let mut maps = PinnedMaps::open(layout)?;
    let stale: Vec<u64> = maps.pods.keys().filter_map(Result::ok).filter(|cookie| !owned(*cookie)).collect();
    for cookie in stale {
        let _ = maps.pods.remove(&cookie);
    }
    Ok(())
}

/// Opens listeners for newly enrolled pods and closes those of pods no longer enrolled.
fn reconcile(config: &DaemonConfig, handler: &Arc<dyn PodTrafficHandler>, maps: &Arc<PinnedMaps>, serving: &mut HashMap<u64, PodListeners>) {
    let set = match read_enrolled(&config.run_dir) {
        Ok(set) => set,
        Err(error) => {
            tracing::warn!(%error, run_dir = %config.run_dir.display(), "cannot read the enrolled set; keeping the current listeners");
            return;
        }
    };
    serving.retain(|cookie, _| {
        let keep = set.pods.iter().any(|pod| pod.netns_cookie == *cookie);
        if !keep {
            tracing::info!(netns_cookie = cookie, "pod unenrolled; its listeners are closed");
        }
        keep
    });
    for pod in set.pods {
        if serving.contains_key(&pod.netns_cookie) {
            continue;
        }
        let netns = match Netns::open(&pod.netns) {
            Ok(netns) => Arc::new(netns),
            Err(error) => {
                tracing::warn!(pod = %pod.name, namespace = %pod.namespace, %error, "cannot open the pod's netns; not serving it");
                continue;
            }
        };
        let context = Arc::new(PodContext {
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            ips: pod.ips.clone(),
            netns_cookie: pod.netns_cookie,
            sockets: Arc::new(PodSocketFactory::new(netns.clone())),
            netns,
        });
        match PodListeners::open(context, handler.clone(), maps.clone()) {
            Ok(listeners) => {
                tracing::info!(pod = %pod.name, namespace = %pod.namespace, netns_cookie = pod.netns_cookie, "serving pod: in-pod listeners open");
                serving.insert(pod.netns_cookie, listeners);
            }
            Err(error) => tracing::warn!(pod = %pod.name, namespace = %pod.namespace, %error, "cannot open the pod's listeners; it stays in fail mode"),
        }
    }
}
