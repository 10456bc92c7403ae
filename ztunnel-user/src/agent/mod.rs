//! `ztunnel agent`: the node's capture agent — Istio's istio-cni node agent, with eBPF instead
//! of iptables. It owns the kernel side and the enrolled set, and hands each enrolled pod's netns
//! to whichever proxy connects over ZDS ([`crate::zds`]): ours, or Istio's own ztunnel.
//!
//! In order, at start ([`Agent::start`]):
//! 1. the run dir's daemon lock (a second agent on the node must not write state or attach);
//! 2. capture ([`capture_lifecycle::prepare`]): programs loaded or adopted, the node's mode
//!    settled, every enrolled pod's capture re-attached, pods whose netns is gone forgotten;
//! 3. the CNI plugin's enrollment socket and the ZDS socket.
//!
//! Then ([`Agent::run`]) it follows the enrolled set — written by the CNI plugin and `ztunnel
//! enroll` as well as through its own socket — and publishes it to every connected proxy. On
//! stop it closes both sockets and releases the lock; every pin stays, so capture (and the
//! fail mode) survives it.

pub mod announce;
pub mod capture_lifecycle;
pub mod enrollment_handler;
pub mod proxy_cgroup;

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot, watch};

pub use capture_lifecycle::CaptureConfig;

use crate::{
    enrollment::{EnrollmentServer, SOCKET_NAME},
    inpod::{
        InpodError,
        capture::CaptureMode,
        state::{DaemonLock, read_enrolled},
    },
    state::StateHandle,
    zds::{
        ZdsError,
        server::{AckBook, AnnouncedPods, ZdsServer},
        transport::{SeqPacket, SeqPacketListener},
    },
};

/// How often the agent re-reads the enrolled set for pods enrolled or removed by the CNI plugin
/// or the CLI without its socket.
const RECONCILE_INTERVAL: Duration = Duration::from_millis(200);

/// How often the agent looks for enrolled pods whose netns disappeared without an unenroll.
const GONE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// The file name of the ZDS socket under the run dir, unless `--zds-socket` says otherwise:
/// with the default run dir, `/var/run/ztunnel/ztunnel.sock`, where Istio's ztunnel looks.
pub const ZDS_SOCKET_NAME: &str = "ztunnel.sock";

/// The agent's settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The kernel side.
    pub capture: CaptureConfig,
    /// Where proxies connect.
    pub zds_socket: PathBuf,
    /// The mesh state, to tell proxies each pod's service account (Kubernetes' `default` when
    /// the state does not know the pod).
    pub mesh: Option<StateHandle>,
}

type ControlRequest = oneshot::Sender<()>;

/// Asks a running agent to publish the enrolled set now (instead of at its next pass).
#[derive(Debug, Clone)]
pub struct AgentControl {
    requests: mpsc::Sender<ControlRequest>,
}

impl AgentControl {
    /// Re-reads the enrolled set and publishes it to the proxies; fails if the agent stopped.
    pub async fn publish_now(&self) -> Result<(), InpodError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || InpodError::Invalid("the capture agent is not running".into());
        self.requests.send(reply).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())
    }
}

/// A started agent: lock held, capture in place, sockets bound.
pub struct Agent {
    config: AgentConfig,
    mode: CaptureMode,
    _lock: DaemonLock,
    published: watch::Sender<AnnouncedPods>,
    zds: ZdsServer,
    control: AgentControl,
    requests: mpsc::Receiver<ControlRequest>,
    sockets: Vec<tokio::task::JoinHandle<()>>,
    enrollment_socket: PathBuf,
}

impl Agent {
    /// Prepares capture under `lock` and binds the enrollment and ZDS sockets (see the module
    /// doc for the order). Needs a tokio runtime.
    pub fn start(config: AgentConfig, lock: DaemonLock) -> Result<Self, InpodError> {
        let (mode, mut programs) = capture_lifecycle::prepare(&config.capture)?;
        let kernel_logs = programs
            .take_logger()
            .map(|logger| tokio::spawn(crate::ebpf::logs::forward(logger)));
        let set = read_enrolled(&config.capture.run_dir)
            .map_err(|source| InpodError::state(&config.capture.run_dir, source))?;
        let (published, pods) = watch::channel(announce::announced(&set, config.mesh.as_ref()));
        let zds = ZdsServer::new(pods);
        let (requests_sender, requests) = mpsc::channel(16);
        let control = AgentControl {
            requests: requests_sender,
        };
        let enrollment_socket = config.capture.run_dir.join(SOCKET_NAME);
        let enrollment =
            EnrollmentServer::bind(&enrollment_socket).map_err(|error| InpodError::Io {
                action: format!("open the enrollment socket {}", enrollment_socket.display()),
                source: std::io::Error::other(error.to_string()),
            })?;
        let zds_listener =
            SeqPacketListener::bind(&config.zds_socket).map_err(|error| InpodError::Io {
                action: "open the ZDS socket".into(),
                source: std::io::Error::other(error.to_string()),
            })?;
        let mut sockets = vec![tokio::spawn(enrollment.serve(Arc::new(
            enrollment_handler::AgentEnrollmentHandler::new(
                control.clone(),
                zds.acks(),
                config.capture.run_dir.clone(),
            ),
        )))];
        let admission = proxy_cgroup::Admission::new(mode, &config.capture.cgroup);
        sockets.push(tokio::spawn(
            zds.clone()
                .serve(zds_listener, move |proxy| admission.admit(proxy)),
        ));
        sockets.extend(kernel_logs);
        tracing::info!(bpffs_root = %config.capture.layout.root().display(), capture = ?mode, fail_mode = ?config.capture.fail_mode, pods = set.pods.len(), zds_socket = %config.zds_socket.display(), "capture agent ready");
        Ok(Self {
            config,
            mode,
            _lock: lock,
            published,
            zds,
            control,
            requests,
            sockets,
            enrollment_socket,
        })
    }

    /// The node's capture mode.
    pub fn mode(&self) -> CaptureMode {
        self.mode
    }

    /// The answers of the connected proxies.
    pub fn acks(&self) -> AckBook {
        self.zds.acks()
    }

    /// A handle to make the agent publish at once.
    pub fn control(&self) -> AgentControl {
        self.control.clone()
    }

    /// A ZDS connection inside this process (the proxy half of `ztunnel daemon`): the same
    /// protocol as over the socket, without the socket.
    pub fn connect_in_process(&self) -> Result<SeqPacket, ZdsError> {
        let (agent_end, proxy_end) = SeqPacket::pair()?;
        let zds = self.zds.clone();
        tokio::spawn(async move {
            if let Err(error) = zds.serve_connection(agent_end).await {
                tracing::warn!(%error, "the in-process ZDS connection ended");
            }
        });
        Ok(proxy_end)
    }

    /// Follows the enrolled set until `stop` turns true; then closes its sockets and releases the
    /// lock (pins stay).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<(), InpodError> {
        let mut ticker = tokio::time::interval(RECONCILE_INTERVAL);
        let mut gone_check = tokio::time::interval(GONE_CHECK_INTERVAL);
        loop {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => break,
                _ = ticker.tick() => self.publish(),
                _ = gone_check.tick() => {
                    if let Err(error) = capture_lifecycle::forget_gone_pods(&self.config.capture) {
                        tracing::warn!(%error, "cannot check for pods whose netns is gone");
                    }
                }
                Some(reply) = self.requests.recv() => {
                    self.publish();
                    let _ = reply.send(());
                }
            }
        }
        for socket in &self.sockets {
            socket.abort();
        }
        let _ = std::fs::remove_file(&self.enrollment_socket);
        let _ = std::fs::remove_file(&self.config.zds_socket);
        tracing::info!(fail_mode = ?self.config.capture.fail_mode, "capture agent stopped: sockets closed, pins kept");
        Ok(())
    }

    /// Publishes the enrolled set to the proxies if it changed.
    fn publish(&self) {
        let set = match read_enrolled(&self.config.capture.run_dir) {
            Ok(set) => set,
            Err(error) => {
                tracing::warn!(%error, run_dir = %self.config.capture.run_dir.display(), "cannot read the enrolled set; the proxies keep what they have");
                return;
            }
        };
        let pods = announce::announced(&set, self.config.mesh.as_ref());
        self.published.send_if_modified(|current| {
            if *current == pods {
                return false;
            }
            *current = pods;
            true
        });
    }
}

/// Takes the run dir's daemon lock, or says who holds it.
pub fn lock_run_dir(run_dir: &std::path::Path) -> Result<DaemonLock, InpodError> {
    DaemonLock::acquire(run_dir).map_err(|source| {
        if source.kind() == std::io::ErrorKind::WouldBlock {
            InpodError::Invalid(format!(
                "cannot start: another ztunnel daemon uses run dir {} (a `ztunnel daemon` or `ztunnel agent` holds its lock: {source}); stop it, pass another --run-dir, or (daemon) pass --takeover to serve beside it and take over when it exits",
                run_dir.display()
            ))
        } else {
            InpodError::state(run_dir, source)
        }
    })
}
