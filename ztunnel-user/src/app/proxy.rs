//! The proxy half: the mesh state (the config file, reloaded on change), workload identity, the
//! HBONE proxy, the operations servers — and `ztunnel proxy`, which serves the pods a capture
//! agent hands it over ZDS. `ztunnel daemon` builds the same half and feeds it from its own
//! agent.

use std::{collections::HashSet, os::fd::OwnedFd, path::Path, sync::Arc, time::Duration};

use tokio::sync::watch;

use super::{AppError, ProxyArgs, ProxyCommandArgs, certificates, memory};
use crate::{
    admin::{AdminServers, AdminSources, Readiness, metrics::Metrics},
    inpod::{pod_server::ServerContext, pods::PodServers},
    proxy::{Drain, ProxyContext, istio_metrics::IstioMetrics, state_directory::StateDirectory},
    zds::{self, client::PodSink, messages::WorkloadInfo},
};

/// The running proxy half; dropping it stops the admin servers and the refresh tasks.
pub struct ProxyHalf {
    /// What every pod server shares.
    pub server: ServerContext,
    /// Readiness, also for the caller's own blockers.
    pub readiness: Readiness,
    drain: Drain,
    drain_seconds: u64,
    _admin: AdminServers,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ProxyHalf {
    /// Loads the config, sets up identity and the proxy, and starts the operations servers.
    /// Readiness is blocked until the caller releases the blocker it asks for.
    ///
    /// `enrolled_run_dir`: where the enrolled set is, when this process has it (the daemon): with
    /// Istio's CA, readiness then also waits for those pods' first certificates.
    pub fn start(args: &ProxyArgs, enrolled_run_dir: Option<&Path>) -> Result<Self, AppError> {
        let metrics = Metrics::new();
        let mut tasks = Vec::new();
        // Readiness first: the state source may block it until its first push.
        let readiness = Readiness::new();
        let super::state_source::StateSource { state, reload, xds } =
            super::state_source::start(args, &metrics, &readiness)?;
        // Istio's CA authenticates ztunnel with the token and cluster id it sends to istiod.
        let authentication = certificates::CaAuthentication {
            token_file: args.xds.token_file.clone(),
            cluster_id: args.xds.cluster_id.clone(),
        };
        let certificates = certificates::store(&args.identity, &authentication)?;
        tasks.extend(crate::identity::ca_renewal::spawn(certificates.clone()));
        tasks.push(certificates.clone().spawn_refresh(Duration::from_secs(
            args.identity.cert_refresh_seconds.max(1),
        )));
        tasks.push(memory::spawn_periodic_release(Duration::from_secs(
            args.memory_release_seconds.max(1),
        )));
        let (drain, drain_watch) = Drain::new();
        let observer = Arc::new(IstioMetrics::new(metrics.clone(), state.clone()));
        let proxy = ProxyContext::with_limits(
            Arc::new(StateDirectory::new(state.clone())),
            certificates.clone(),
            drain_watch,
            observer,
            (&args.limits).into(),
        );
        proxy
            .pool
            .set_idle_timeout(Duration::from_secs(args.hbone_idle_seconds));
        // A reload (or xDS push) that refuses open connections closes them.
        tasks.push(proxy.close_refused_on_change(state.changes()));
        if args.identity.istio_ca.ca_address.is_some()
            && let Some(run_dir) = enrolled_run_dir
        {
            let blocker = readiness.block("certificates of the enrolled pods from Istio's CA");
            let identities =
                certificates::enrolled_identities(run_dir, &state, certificates.trust_domain());
            let store = certificates.clone();
            tasks.push(tokio::spawn(async move {
                certificates::first_certificates(&store, &identities).await;
                blocker.release();
            }));
        }
        let admin = AdminServers::start(
            &(&args.admin).into(),
            AdminSources {
                state: state.clone(),
                metrics,
                readiness: readiness.clone(),
                certificates: certificates.clone(),
                reload,
                xds,
            },
        )?;
        Ok(Self {
            server: ServerContext {
                proxy,
                state,
                certificates,
            },
            readiness,
            drain,
            drain_seconds: args.drain_seconds,
            _admin: admin,
            _tasks: tasks,
        })
    }

    /// Readiness turns 503 and open connections get the drain window; returns how many were
    /// still open at its end.
    pub async fn drain(self) {
        self.readiness.set_draining();
        let timeout = Duration::from_secs(self.drain_seconds);
        let left = self.drain.drain(timeout).await;
        tracing::info!(left_open = left, ?timeout, "drain finished");
    }
}

/// A [`PodSink`] that calls `ready` once, when the first snapshot has been applied: a proxy is
/// ready when it serves every pod the agent had.
pub struct ReadyAfterSnapshot<'a> {
    /// The pods.
    pub pods: &'a mut PodServers,
    /// Called once.
    pub ready: Option<Box<dyn FnOnce() + Send>>,
}

impl PodSink for ReadyAfterSnapshot<'_> {
    async fn add(
        &mut self,
        uid: String,
        info: Option<WorkloadInfo>,
        netns: OwnedFd,
    ) -> Result<(), String> {
        self.pods.add(uid, info, netns).await
    }
    fn keep(&mut self, uid: &str) -> Result<(), String> {
        self.pods.keep(uid)
    }
    fn delete(&mut self, uid: &str) {
        self.pods.delete(uid)
    }
    fn retain(&mut self, named: &HashSet<String>) {
        self.pods.retain(named);
        if let Some(ready) = self.ready.take() {
            ready();
        }
    }
}

/// A watch that turns true on SIGTERM or SIGINT.
pub fn stop_on_signal() -> Result<watch::Receiver<bool>, AppError> {
    use tokio::signal::unix::{SignalKind, signal};
    let signal_error = |source| AppError::Runtime(source);
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("stopping");
        stop.send_replace(true);
        // Keep the sender: receivers must not read a dropped sender as a second stop.
        std::future::pending::<()>().await;
    });
    Ok(stopped)
}

/// `ztunnel proxy`: serves the pods the agent at `--zds-socket` hands over until SIGTERM, then
/// closes their listeners and drains.
pub fn run(args: ProxyCommandArgs) -> Result<(), AppError> {
    let runtime = super::runtime::build(&args.proxy.runtime).map_err(AppError::Runtime)?;
    runtime.block_on(async move {
        let half = ProxyHalf::start(&args.proxy, None)?;
        let stop = stop_on_signal()?;
        let serving = half.readiness.block("pods of the capture agent served");
        half.readiness.startup_complete();
        let mut pods = PodServers::new(half.server.clone());
        let mut sink = ReadyAfterSnapshot {
            pods: &mut pods,
            ready: Some(Box::new(move || serving.release())),
        };
        zds::client::run(&args.zds_socket, &mut sink, stop).await;
        let served = pods.len();
        pods.clear();
        tracing::info!(pods = served, "proxy stopped: in-pod listeners closed");
        half.drain().await;
        Ok(())
    })
}
