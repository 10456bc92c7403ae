//! `ztunnel waypoint`: an L4 waypoint. HBONE in on :15008 with the waypoint's own identity,
//! the destination's authorization policy applied to the *client's* identity, HBONE out to the
//! destination workload with the waypoint's identity.
//!
//! Several replicas run side by side, each in its own (not captured) pod; node proxies reach
//! them through the waypoint service named in a workload's or service's `waypoint`, balance
//! across its endpoints and retry a dead replica on another one (see [`crate::proxy::retry`]).
//! A workload behind a waypoint takes HBONE only from the waypoint's identity (checked by the
//! destination's node proxy, see [`crate::proxy::inbound`]).
//!
//! Forwarding only: traffic to destinations that do not speak HBONE, or outside the mesh
//! config, is refused with 503. Metrics carry `reporter="waypoint"`.

mod handler;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use clap::Args;
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
};
use tokio_rustls::TlsAcceptor;
use ztunnel_common::constants::HBONE_PORT;

pub use handler::WaypointHandler;

use crate::{
    admin::{AdminArgs, AdminError, AdminServers, AdminSources, Readiness, metrics::Metrics},
    app::{IdentityArgs, KeepaliveArgs, certificates, memory, runtime},
    config::{ConfigError, reload::Reloader},
    identity::{IdentityError, SpiffeId, tls},
    proxy::{
        Drain, ProxyContext, ProxyLimits, istio_metrics::IstioMetrics,
        state_directory::StateDirectory,
    },
};

/// `ztunnel waypoint`.
#[derive(Debug, Args)]
pub struct WaypointArgs {
    /// The waypoint's namespace (its identity is `<trust domain>/ns/<namespace>/sa/<account>`).
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The waypoint's service account.
    #[arg(long, default_value = "waypoint")]
    pub service_account: String,
    /// Where HBONE is accepted.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], HBONE_PORT)))]
    pub hbone_address: SocketAddr,
    /// The workloads/services/policies file (Istio ztunnel local-config shape), reloaded on
    /// change: where destinations are and which policies apply to them.
    #[arg(long = "config", value_name = "FILE")]
    pub config_file: PathBuf,
    /// How often the config file is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub config_poll_ms: u64,
    /// Where certificates come from.
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// The operations servers.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// How long open connections may take to finish after SIGTERM, in seconds.
    #[arg(long, default_value_t = 25)]
    pub drain_seconds: u64,
    /// How often freed heap memory is returned to the kernel (glibc `malloc_trim`), in seconds.
    #[arg(long, default_value_t = 30)]
    pub memory_release_seconds: u64,
    /// The async runtime.
    #[command(flatten)]
    pub runtime: runtime::RuntimeArgs,
    /// HBONE keep-alive PINGs and the bound on a connection without streams.
    #[command(flatten)]
    pub keepalive: KeepaliveArgs,
}

/// Why the waypoint could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WaypointError {
    /// The config file is unusable at start.
    #[error("cannot load the workload config: {0}")]
    Config(#[from] ConfigError),
    /// The waypoint's certificate cannot be had.
    #[error("cannot set up the waypoint's identity: {0}")]
    Identity(#[from] IdentityError),
    /// The operations servers cannot start.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The HBONE listener cannot be bound.
    #[error(
        "cannot listen for HBONE on {address}: {source} (is another waypoint running in this netns?)"
    )]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The runtime or signal handlers cannot start.
    #[error("cannot start the waypoint: {0}")]
    Runtime(std::io::Error),
}

/// Runs the waypoint until SIGTERM/SIGINT and the drain that follows.
pub fn run(args: WaypointArgs) -> Result<(), WaypointError> {
    // The node proxy's allocator policy: the waypoint forwards through h2 on both sides, so it
    // would page-fault fresh frame buffers in the same way (see `app::memory`).
    memory::keep_freed_memory_for_reuse();
    let runtime = runtime::build(&args.runtime).map_err(WaypointError::Runtime)?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: WaypointArgs) -> Result<(), WaypointError> {
    let metrics = Metrics::new();
    let reloader = Reloader::start(&args.config_file)?.with_metrics(metrics.clone());
    let state = reloader.state();
    let reload = reloader.subscribe();
    tokio::spawn(reloader.run(Duration::from_millis(args.config_poll_ms.max(1))));

    let certificates =
        certificates::store(&args.identity, &certificates::CaAuthentication::default())?;
    let _ca_renewal = crate::identity::ca_renewal::spawn(certificates.clone());
    let identity = SpiffeId::new(
        certificates.trust_domain(),
        &args.namespace,
        &args.service_account,
    );
    // Issued (or read) now, so that a waypoint without a usable certificate fails at start;
    // from Istio's CA, awaited (the CA may be down for a while).
    // The waypoint's own certificate is needed for as long as it runs.
    let _certificate_lease = certificates.lease(&identity);
    if args.identity.istio_ca.ca_address.is_some() {
        certificates::first_certificates(&certificates, std::slice::from_ref(&identity)).await;
    } else {
        certificates.certificate(&identity)?;
    }
    let _refresh = certificates.clone().spawn_refresh(Duration::from_secs(
        args.identity.cert_refresh_seconds.max(1),
    ));
    let _memory =
        memory::spawn_periodic_release(Duration::from_secs(args.memory_release_seconds.max(1)));
    let acceptor = TlsAcceptor::from(tls::server_config(certificates.clone(), identity.clone())?);

    let (drain, drain_watch) = Drain::new();
    let limits = ProxyLimits {
        keepalive: (&args.keepalive).into(),
        ..ProxyLimits::default()
    };
    let context = ProxyContext::with_limits(
        Arc::new(StateDirectory::new(state.clone())),
        certificates.clone(),
        drain_watch,
        Arc::new(IstioMetrics::new(metrics.clone(), state.clone())),
        limits,
    );
    // A reload that refuses open connections closes them.
    let _policy_watch = context.close_refused_on_change(state.changes());
    let listener = TcpListener::bind(args.hbone_address)
        .await
        .map_err(|source| WaypointError::Bind {
            address: args.hbone_address,
            source,
        })?;
    let readiness = Readiness::new();
    let _admin = AdminServers::start(
        &(&args.admin).into(),
        AdminSources {
            state,
            metrics,
            readiness: readiness.clone(),
            certificates,
            reload: Some(reload),
            xds: None,
        },
    )?;

    let mut terminate = signal(SignalKind::terminate()).map_err(WaypointError::Runtime)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(WaypointError::Runtime)?;
    let handler = Arc::new(WaypointHandler::new(context, identity.clone()));
    readiness.startup_complete();
    tracing::info!(%identity, hbone = %args.hbone_address, "ztunnel waypoint ready");
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    tokio::spawn(handler.clone().serve_connection(acceptor.clone(), tcp));
                }
                Err(error) => tracing::warn!(%error, "waypoint accept failed"),
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    drop(listener);
    readiness.set_draining();
    let timeout = Duration::from_secs(args.drain_seconds);
    let left = drain.drain(timeout).await;
    tracing::info!(left_open = left, ?timeout, "waypoint drained");
    Ok(())
}
