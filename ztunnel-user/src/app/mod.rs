//! `ztunnel daemon`: the node proxy put together — the workload config (reloaded on change),
//! workload identity, the HBONE proxy behind every enrolled pod's in-pod listeners, the kernel
//! capture, and the operations servers (admin, metrics, readiness) on their own thread.
//!
//! Shutdown (SIGTERM): readiness turns 503, the in-pod listeners close (the kernel applies the
//! fail mode to new connections; pins stay), then open connections get the drain window.

pub mod args;
pub mod certificates;
pub mod memory;
pub mod pod_handler;
pub mod runtime;

use std::{sync::Arc, time::Duration};

pub use args::{CaptureArg, DaemonArgs, FailModeArg, IdentityArgs, LimitArgs};

use crate::{
    admin::{AdminError, AdminServers, AdminSources, Readiness, metrics::Metrics},
    config::{ConfigError, reload::Reloader},
    ebpf::{EbpfError, PinLayout, loader::MapSizes},
    identity::IdentityError,
    inpod::{InpodError, daemon::DaemonConfig},
    proxy::{Drain, ProxyContext, istio_metrics::IstioMetrics, state_directory::StateDirectory},
    state::StateHandle,
};

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The workload config file is unusable at start (later bad versions are only rejected).
    #[error("cannot load the workload config: {0}")]
    Config(#[from] ConfigError),
    /// Certificates or the CA are unusable.
    #[error("cannot set up workload identity: {0}")]
    Identity(#[from] IdentityError),
    /// The operations servers cannot start.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// Capture or the in-pod listeners failed.
    #[error(transparent)]
    Inpod(#[from] InpodError),
    /// The async runtime cannot start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Runs the daemon until SIGTERM/SIGINT and the drain that follows.
pub fn run(args: DaemonArgs) -> Result<(), AppError> {
    let runtime = runtime::build(&args.runtime).map_err(AppError::Runtime)?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: DaemonArgs) -> Result<(), AppError> {
    // Before anything else starts: a daemon that cannot pin must not take ports or report ready.
    let layout = PinLayout::new(&args.bpffs_root);
    layout.check().map_err(|problem| {
        InpodError::from(EbpfError::Bpffs {
            root: args.bpffs_root.clone(),
            problem,
        })
    })?;
    let metrics = Metrics::new();
    let (state, reload) = match &args.config_file {
        Some(path) => {
            let reloader = Reloader::start(path)?.with_metrics(metrics.clone());
            let state = reloader.state();
            let outcomes = reloader.subscribe();
            tokio::spawn(reloader.run(args.config_poll_interval()));
            (state, Some(outcomes))
        }
        None => {
            tracing::info!(
                "no --config: the mesh is empty and every destination is passed through"
            );
            (StateHandle::default(), None)
        }
    };
    // Istio's CA authenticates ztunnel with the token and cluster id it sends to istiod.
    let certificates =
        certificates::store(&args.identity, &certificates::CaAuthentication::default())?;
    let _ca_renewal = crate::identity::ca_renewal::spawn(certificates.clone());
    let _refresh = certificates.clone().spawn_refresh(Duration::from_secs(
        args.identity.cert_refresh_seconds.max(1),
    ));

    let _memory =
        memory::spawn_periodic_release(Duration::from_secs(args.memory_release_seconds.max(1)));

    let (drain, drain_watch) = Drain::new();
    let observer = Arc::new(IstioMetrics::new(metrics.clone(), state.clone()));
    let context = ProxyContext::with_limits(
        Arc::new(StateDirectory::new(state.clone())),
        certificates.clone(),
        drain_watch,
        observer,
        (&args.limits).into(),
    );
    context
        .pool
        .set_idle_timeout(Duration::from_secs(args.hbone_idle_seconds));
    // A reload (or xDS push) that refuses open connections closes them.
    let _policy_watch = context.close_refused_on_change(state.changes());

    let readiness = Readiness::new();
    let serving = readiness.block("enrolled pods served");
    if args.identity.istio_ca.ca_address.is_some() {
        let blocker = readiness.block("certificates of the enrolled pods from Istio's CA");
        let identities =
            certificates::enrolled_identities(&args.run_dir, &state, certificates.trust_domain());
        let store = certificates.clone();
        tokio::spawn(async move {
            certificates::first_certificates(&store, &identities).await;
            blocker.release();
        });
    }
    readiness.startup_complete();
    let _admin = AdminServers::start(
        &(&args.admin).into(),
        AdminSources {
            state: state.clone(),
            metrics,
            readiness: readiness.clone(),
            certificates: certificates.clone(),
            reload,
        },
    )?;

    let handler = Arc::new(pod_handler::MeshHandler::new(context, state, certificates));
    let daemon = DaemonConfig {
        layout,
        cgroup: args.cgroup.clone(),
        run_dir: args.run_dir.clone(),
        fail_mode: args.fail_mode.into(),
        kernel_log_level: args.kernel_log_level.into(),
        map_sizes: MapSizes {
            max_pods: args.max_pods,
        },
        takeover: args.takeover,
        capture: args.capture.into(),
    };
    let outcome = crate::inpod::daemon::run(daemon, handler, move || serving.release()).await;
    readiness.set_draining();
    let timeout = Duration::from_secs(args.drain_seconds);
    let left = drain.drain(timeout).await;
    tracing::info!(left_open = left, ?timeout, "drain finished");
    outcome.map_err(AppError::from)
}
