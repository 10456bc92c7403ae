//! The three ways to run a node, put together in order:
//!
//! - `ztunnel daemon` ([`run`]): the capture agent and the proxy in one process, joined by an
//!   in-process ZDS connection — the same protocol Istio's ztunnel speaks with our agent.
//! - `ztunnel agent` ([`agent::run`]): capture only; proxies connect over the ZDS socket.
//! - `ztunnel proxy` ([`proxy::run`]): our proxy as a ZDS client of an agent.
//!
//! Shutdown (SIGTERM): readiness turns 503, the in-pod listeners close (the kernel applies the
//! fail mode to new connections; pins stay), the agent's sockets close and the run dir is
//! released — in that order, so an upgrade's new daemon standing by never finds the pods
//! without a listener — then open connections get the drain window.

pub mod agent;
pub mod args;
pub mod certificates;
pub mod memory;
pub mod proxy;
pub mod runtime;
pub mod state_source;
pub mod takeover;

pub use args::{
    AgentArgs, CaptureArg, CaptureArgs, DaemonArgs, FailModeArg, IdentityArgs, KeepaliveArgs,
    LimitArgs, ProxyArgs, ProxyCommandArgs,
};

use std::path::PathBuf;

use tokio::sync::watch;

use crate::{
    admin::AdminError,
    agent::{Agent, AgentConfig, CaptureConfig},
    config::ConfigError,
    ebpf::{EbpfError, PinLayout, cgroup::CgroupError, loader::MapSizes},
    identity::IdentityError,
    inpod::{InpodError, pods::PodServers},
    state::StateHandle,
    zds::{self, ZdsError},
};

/// Why a node process could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The workload config file is unusable at start (later bad versions are only rejected).
    #[error("cannot load the workload config: {0}")]
    Config(#[from] ConfigError),
    /// The xDS client cannot be configured (address, root certificate).
    #[error("cannot set up xDS: {0}")]
    Xds(#[from] crate::xds::XdsError),
    /// Certificates or the CA are unusable.
    #[error("cannot set up workload identity: {0}")]
    Identity(#[from] IdentityError),
    /// The operations servers cannot start.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// Capture or the in-pod listeners failed.
    #[error(transparent)]
    Inpod(#[from] InpodError),
    /// The agent/proxy connection failed.
    #[error(transparent)]
    Zds(#[from] ZdsError),
    /// No cgroup-v2 directory for the capture hooks.
    #[error("cannot choose the cgroup for eBPF capture: {0}")]
    Cgroup(#[from] CgroupError),
    /// The async runtime cannot start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// The capture agent's configuration from its flags and the cgroup [`capture_cgroup`] settled.
pub(crate) fn capture_config(args: &CaptureArgs, cgroup: PathBuf) -> CaptureConfig {
    CaptureConfig {
        layout: PinLayout::new(&args.bpffs_root),
        cgroup,
        run_dir: args.run_dir.clone(),
        fail_mode: args.fail_mode.into(),
        kernel_log_level: args.kernel_log_level.into(),
        map_sizes: MapSizes {
            max_pods: args.max_pods,
        },
        capture: args.capture.into(),
    }
}

/// A daemon or agent that cannot pin must not take ports or report ready: checked first.
pub(crate) fn check_bpffs(args: &CaptureArgs) -> Result<(), AppError> {
    PinLayout::new(&args.bpffs_root).check().map_err(|problem| {
        AppError::from(InpodError::from(EbpfError::Bpffs {
            root: args.bpffs_root.clone(),
            problem,
        }))
    })
}

/// Runs the daemon until SIGTERM/SIGINT and the drain that follows.
pub fn run(args: DaemonArgs) -> Result<(), AppError> {
    let runtime = runtime::build(&args.proxy.runtime).map_err(AppError::Runtime)?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: DaemonArgs) -> Result<(), AppError> {
    // Before anything else starts: a daemon that cannot attach or pin must not take ports,
    // touch pins or report ready.
    let cgroup = capture_cgroup(&args.capture)?;
    check_bpffs(&args.capture)?;
    let half = proxy::ProxyHalf::start(&args.proxy, Some(&args.capture.run_dir))?;
    let mut stop = proxy::stop_on_signal()?;
    let serving = half.readiness.block("enrolled pods served");
    half.readiness.startup_complete();
    let mut pods = PodServers::new(half.server.clone());
    let mut release: Option<Box<dyn FnOnce() + Send>> = Some(Box::new(move || serving.release()));
    let zds_socket = args.capture.zds_socket();

    // The run dir's lock first: a daemon already running keeps its sockets and its state.
    let lock = match crate::agent::lock_run_dir(&args.capture.run_dir) {
        Ok(lock) => lock,
        Err(error) if args.takeover => {
            tracing::info!(%error, "standing by (--takeover)");
            let standing = takeover::stand_by(
                &zds_socket,
                &args.capture.run_dir,
                &mut pods,
                &mut release,
                &mut stop,
            );
            match standing.await? {
                Some(lock) => lock,
                None => {
                    let served = pods.len();
                    pods.clear();
                    tracing::info!(
                        pods = served,
                        "stopped while standing by: in-pod listeners closed"
                    );
                    half.drain().await;
                    return Ok(());
                }
            }
        }
        Err(error) => return Err(error.into()),
    };
    let agent = Agent::start(
        AgentConfig {
            capture: capture_config(&args.capture, cgroup),
            zds_socket,
            mesh: Some(half.server.state.clone()),
        },
        lock,
    )?;
    let connection = agent.connect_in_process()?;
    let mode = agent.mode();
    let (stop_agent, agent_stopped) = watch::channel(false);
    let agent = tokio::spawn(agent.run(agent_stopped));
    let release = release.take();
    let mut sink = proxy::ReadyAfterSnapshot {
        pods: &mut pods,
        ready: Some(Box::new(move || {
            if let Some(release) = release {
                release();
            }
            tracing::info!(capture = ?mode, "ztunnel daemon ready");
        })),
    };
    let outcome = zds::client::serve_connection(&connection, &mut sink, &mut stop).await;
    let served = pods.len();
    pods.clear();
    tracing::info!(pods = served, "in-pod listeners closed");
    stop_agent.send_replace(true);
    let agent_outcome = agent
        .await
        .map_err(|error| InpodError::Invalid(format!("the capture agent task failed: {error}")))?;
    half.drain().await;
    outcome?;
    agent_outcome?;
    Ok(())
}

/// The mesh state the agent reads service accounts from: the config file, when given.
pub(crate) fn mesh_state(args: &AgentArgs) -> Result<Option<StateHandle>, AppError> {
    let Some(path) = &args.config_file else {
        return Ok(None);
    };
    let reloader = crate::config::reload::Reloader::start(path)?;
    let state = reloader.state();
    tokio::spawn(reloader.run(std::time::Duration::from_millis(args.config_poll_ms.max(1))));
    Ok(Some(state))
}

/// The cgroup the capture hooks attach to (`--cgroup`, else the cgroup2 mount). eBPF capture
/// cannot do without one; `iptables` never attaches, and `auto` falls back to iptables when
/// attaching fails, so for those a missing cgroup is only a warning.
pub(crate) fn capture_cgroup(args: &CaptureArgs) -> Result<PathBuf, AppError> {
    match crate::ebpf::cgroup::daemon_cgroup(args.cgroup.as_deref()) {
        Ok(cgroup) => Ok(cgroup),
        Err(error) if args.capture == CaptureArg::Ebpf => Err(error.into()),
        Err(error) => {
            tracing::warn!(%error, capture = ?args.capture,
                "no cgroup-v2 directory: the cgroup programs will not attach");
            Ok(args.cgroup.clone().unwrap_or_default())
        }
    }
}
