//! `ztunnel daemon`: load or adopt the kernel programs, keep every enrolled pod's listeners
//! open, and follow the enrolled set as pods come and go. SIGTERM/SIGINT close the listeners
//! (the kernel then applies the fail mode) and keep every pin, so capture survives.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};

use super::enrollment_handler::DaemonEnrollmentHandler;
use super::{
    InpodError,
    capture::{CaptureMode, CaptureRequest, decide},
    enroll::{apply_capture, forget_pod, still_exists, write_map_entries},
    handler::{PodContext, PodTrafficHandler},
    listeners::PodListeners,
    netns::Netns,
    socket_factory::PodSocketFactory,
    state::{DaemonLock, EnrolledPod, StateLock, read_enrolled},
};
use crate::{
    ebpf::{
        EbpfError, LoadedPrograms, PinLayout, PinnedMaps,
        loader::{MapSizes, kernel_has_tcx, remove_cgroup_links},
        map_layout::IncompatibleMaps,
        maps::{FailMode, KernelLogLevel, pod_capacity},
    },
    enrollment::{EnrollmentServer, SOCKET_NAME},
};

/// How often the daemon re-reads the enrolled set for pods enrolled or removed by the CLI.
pub(super) const RECONCILE_INTERVAL: Duration = Duration::from_millis(200);

/// How often the daemon looks for enrolled pods whose netns disappeared without an unenroll
/// (its own open listeners would otherwise keep such a namespace alive).
const GONE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

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
    /// Most verbose record the kernel programs emit.
    pub kernel_log_level: KernelLogLevel,
    /// Sizes of maps this daemon creates.
    pub map_sizes: MapSizes,
    /// When another daemon holds the run dir: serve beside it and take over when it exits
    /// ([`super::takeover`]) instead of failing.
    pub takeover: bool,
    /// eBPF, iptables, or eBPF with the iptables fallback.
    pub capture: CaptureRequest,
}

/// Runs until SIGTERM or SIGINT; calls `on_ready` once every enrolled pod is served and the
/// enrollment socket answers. Minimum kernel 6.6.
pub async fn run(
    config: DaemonConfig,
    handler: Arc<dyn PodTrafficHandler>,
    on_ready: impl FnOnce() + Send + 'static,
) -> Result<(), InpodError> {
    // The lock comes first: the enrollment socket of a daemon already running must not be taken.
    let mut serving: HashMap<u64, PodListeners> = HashMap::new();
    let mut on_ready = Some(on_ready);
    let _only_daemon = match DaemonLock::acquire(&config.run_dir) {
        Ok(lock) => lock,
        Err(source) if config.takeover && source.kind() == std::io::ErrorKind::WouldBlock => {
            let ready = on_ready.take();
            let standing_by = super::takeover::stand_by(&config, &handler, &mut serving, || {
                if let Some(ready) = ready {
                    ready();
                }
            });
            match standing_by.await? {
                Some(lock) => lock,
                None => {
                    tracing::info!(
                        pods = serving.len(),
                        "stopped while standing by: in-pod listeners closed"
                    );
                    return Ok(());
                }
            }
        }
        Err(source) => {
            return Err(InpodError::Invalid(format!(
                "cannot start: another ztunnel daemon uses run dir {} ({source}); stop it, pass another --run-dir, or pass --takeover to serve beside it and take over when it exits",
                config.run_dir.display()
            )));
        }
    };
    let (control, receiver) = control_channel();
    let socket_path = config.run_dir.join(SOCKET_NAME);
    let server = EnrollmentServer::bind(&socket_path).map_err(|error| InpodError::Io {
        action: format!("open the enrollment socket {}", socket_path.display()),
        source: std::io::Error::other(error.to_string()),
    })?;
    // The loop answers its first control request only after its first reconcile.
    if let Some(on_ready) = on_ready {
        let ready_probe = control.clone();
        tokio::spawn(async move {
            if ready_probe.reconcile().await.is_ok() {
                on_ready();
            }
        });
    }
    let enrollment = tokio::spawn(server.serve(Arc::new(DaemonEnrollmentHandler::new(
        control,
        config.run_dir.clone(),
    ))));
    let outcome = run_controlled(config, handler, serving, Some(receiver)).await;
    enrollment.abort();
    let _ = std::fs::remove_file(&socket_path);
    outcome
}

/// A pod whose in-pod listeners are open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedPod {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Cookie of its netns.
    pub netns_cookie: u64,
}

type ControlRequest = oneshot::Sender<Vec<ServedPod>>;

/// In-process control of a running daemon, for the enrollment socket server (issue 4): after a
/// pod was enrolled through [`super::enroll`], [`DaemonControl::reconcile`] makes the daemon
/// open its listeners at once (instead of at the next periodic pass) and reports what it serves.
#[derive(Debug, Clone)]
pub struct DaemonControl {
    requests: mpsc::Sender<ControlRequest>,
}

/// The daemon's end of a [`DaemonControl`]; pass it to [`run_controlled`].
#[derive(Debug)]
pub struct ControlReceiver {
    requests: mpsc::Receiver<ControlRequest>,
}

/// A connected control handle and the receiver the daemon takes.
pub fn control_channel() -> (DaemonControl, ControlReceiver) {
    let (sender, receiver) = mpsc::channel(16);
    (
        DaemonControl { requests: sender },
        ControlReceiver { requests: receiver },
    )
}

impl DaemonControl {
    /// Re-reads the enrolled set now, opens or closes listeners accordingly and returns every
    /// pod whose listeners are open. Fails if the daemon is not running (any more).
    pub async fn reconcile(&self) -> Result<Vec<ServedPod>, InpodError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || InpodError::Invalid("the ztunnel daemon is not running".into());
        self.requests.send(reply).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())
    }
}

/// [`run`] after it holds the run dir, also answering [`DaemonControl`] requests when `control`
/// is given. `serving` holds listeners already open (those of a daemon that stood by).
async fn run_controlled(
    config: DaemonConfig,
    handler: Arc<dyn PodTrafficHandler>,
    mut serving: HashMap<u64, PodListeners>,
    control: Option<ControlReceiver>,
) -> Result<(), InpodError> {
    let mut control = control.map(|control| control.requests);
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
    let capture = choose_capture(&mut programs, &config)?;
    let _kernel_logs = programs
        .take_logger()
        .map(|logger| tokio::spawn(crate::ebpf::logs::forward(logger)));
    adopt_enrolled_pods(&mut programs, &config, capture)?;
    let maps = Arc::new(maps);
    reconcile(&config, &handler, &maps, &mut serving);
    tracing::info!(bpffs_root = %config.layout.root().display(), capture = ?capture, fail_mode = ?config.fail_mode, pods = serving.len(), "ztunnel daemon ready");

    let signal_error = |source| InpodError::Io {
        action: "install signal handlers".into(),
        source,
    };
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let mut ticker = tokio::time::interval(RECONCILE_INTERVAL);
    let mut gone_check = tokio::time::interval(GONE_CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = ticker.tick() => reconcile(&config, &handler, &maps, &mut serving),
            _ = gone_check.tick() => {
                if let Err(error) = forget_gone_pods(&config) {
                    tracing::warn!(%error, "cannot check for pods whose netns is gone");
                }
            }
            Some(reply) = next_request(&mut control) => {
                reconcile(&config, &handler, &maps, &mut serving);
                let _ = reply.send(served(&config, &serving));
            }
        }
    }
    let pods = serving.len();
    drop(serving);
    tracing::info!(pods, fail_mode = ?config.fail_mode, "ztunnel daemon stopped: in-pod listeners closed, pins kept");
    Ok(())
}

/// Attaches the cgroup programs unless iptables capture is asked for, and settles the node's
/// capture mode ([`decide`]). In iptables mode no cgroup link of ours stays pinned.
fn choose_capture(
    programs: &mut LoadedPrograms,
    config: &DaemonConfig,
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
    config: &DaemonConfig,
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
        if let Err(error) = super::routing::install_upstream_routing(&netns) {
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
fn forget_gone_pods(config: &DaemonConfig) -> Result<(), InpodError> {
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

/// The next control request, or never if there is no control channel (or it closed).
async fn next_request(
    control: &mut Option<mpsc::Receiver<ControlRequest>>,
) -> Option<ControlRequest> {
    match control {
        Some(receiver) => match receiver.recv().await {
            Some(request) => Some(request),
            None => {
                *control = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// The pods with open listeners, named from the enrolled set.
fn served(config: &DaemonConfig, serving: &HashMap<u64, PodListeners>) -> Vec<ServedPod> {
    let set = read_enrolled(&config.run_dir).unwrap_or_default();
    set.pods
        .into_iter()
        .filter(|pod| serving.contains_key(&pod.netns_cookie))
        .map(|pod| ServedPod {
            namespace: pod.namespace,
            name: pod.name,
            netns_cookie: pod.netns_cookie,
        })
        .collect()
}

/// Opens listeners for newly enrolled pods and closes those of pods no longer enrolled.
pub(super) fn reconcile(
    config: &DaemonConfig,
    handler: &Arc<dyn PodTrafficHandler>,
    maps: &Arc<PinnedMaps>,
    serving: &mut HashMap<u64, PodListeners>,
) {
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
            tracing::info!(
                netns_cookie = cookie,
                "pod no longer enrolled; its listeners are closed"
            );
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
        match PodListeners::open(context, handler.clone(), maps.clone(), pod.capture) {
            Ok(listeners) => {
                tracing::info!(pod = %pod.name, namespace = %pod.namespace, netns_cookie = pod.netns_cookie, "serving pod: in-pod listeners open");
                serving.insert(pod.netns_cookie, listeners);
            }
            Err(error) => {
                tracing::warn!(pod = %pod.name, namespace = %pod.namespace, %error, "cannot open the pod's listeners; it stays in fail mode")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn control_fails_clearly_when_the_daemon_is_not_running() {
        let (control, receiver) = control_channel();
        drop(receiver);
        let error = control.reconcile().await.unwrap_err();
        assert!(error.to_string().contains("not running"), "{error}");
    }
}
