//! The operations surface, on Istio's ports: admin (`/config_dump`, localhost only, 15000),
//! Prometheus `/metrics` (15020) and `/healthz/ready` (15021).
//!
//! The three servers run on a thread and runtime of their own, so a saturated data path can
//! neither starve the readiness probe nor be slowed by a scrape.

mod certificates;
pub mod config_dump;
mod http;
pub mod metrics;
pub mod operations;
pub mod readiness;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

use hyper::{Method, StatusCode};
use tokio::sync::{oneshot, watch};
use ztunnel_common::constants::{ADMIN_PORT, METRICS_PORT, READINESS_PORT};

pub use config_dump::{CertificateDetails, CertificateInfo, CertificateSummary, no_certificates};
pub use metrics::{
    ConnectionLabels, Metrics, OpenConnectionCounters, Reporter, ResponseFlags, SecurityPolicy,
};
pub use operations::{Operations, OperationsError};
pub use readiness::{Readiness, ReadinessBlocker};

use self::http::{Route, respond, serve, text};
use crate::{config::ReloadOutcome, state::StateHandle};

/// Why the operations servers cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The admin server shows the whole configuration; it must not be reachable from outside.
    #[error(
        "admin address {0} is not a loopback address (the admin server must stay on localhost)"
    )]
    AdminNotLoopback(SocketAddr),
    /// A listener cannot be bound.
    #[error(
        "cannot listen on {address} for the {server} server: {source} (is another ztunnel running?)"
    )]
    Bind {
        /// Which server.
        server: &'static str,
        /// The address asked for.
        address: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The server thread or its runtime cannot be created.
    #[error("cannot start the operations server thread: {0}")]
    Thread(std::io::Error),
}

/// Where the servers listen. Port 0 picks a free port (tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// `/config_dump`; must be a loopback address.
    pub admin_address: SocketAddr,
    /// `/metrics`.
    pub metrics_address: SocketAddr,
    /// `/healthz/ready`.
    pub readiness_address: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        Self {
            admin_address: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), ADMIN_PORT),
            metrics_address: SocketAddr::new(any, METRICS_PORT),
            readiness_address: SocketAddr::new(any, READINESS_PORT),
        }
    }
}

/// The command-line flags for the three servers; flatten into the daemon's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Where the admin server (`/config_dump`) listens; must be a loopback address.
    #[arg(long, default_value_t = AdminConfig::default().admin_address)]
    pub admin_address: SocketAddr,
    /// Where Prometheus `/metrics` is served.
    #[arg(long, default_value_t = AdminConfig::default().metrics_address)]
    pub metrics_address: SocketAddr,
    /// Where `/healthz/ready` is served.
    #[arg(long, default_value_t = AdminConfig::default().readiness_address)]
    pub readiness_address: SocketAddr,
}

impl From<&AdminArgs> for AdminConfig {
    fn from(args: &AdminArgs) -> Self {
        Self {
            admin_address: args.admin_address,
            metrics_address: args.metrics_address,
            readiness_address: args.readiness_address,
        }
    }
}

/// What the servers report on.
#[derive(Clone)]
pub struct AdminSources {
    /// Workloads, services and policies.
    pub state: StateHandle,
    /// The process's metrics.
    pub metrics: Metrics,
    /// Whether the daemon is ready.
    pub readiness: Readiness,
    /// The certificates held (from the identity module).
    pub certificates: Arc<dyn CertificateInfo>,
    /// The last configuration reload, when the configuration comes from a watched file.
    pub reload: Option<watch::Receiver<ReloadOutcome>>,
    /// The xDS client's status, when the configuration comes from istiod.
    pub xds: Option<watch::Receiver<crate::xds::XdsStatus>>,
}

/// The running servers; dropping this stops them.
#[derive(Debug)]
pub struct AdminServers {
    /// Where `/config_dump` is served.
    pub admin_address: SocketAddr,
    /// Where `/metrics` is served.
    pub metrics_address: SocketAddr,
    /// Where `/healthz/ready` is served.
    pub readiness_address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Binds with `SO_REUSEPORT`, so that during an upgrade the new daemon can serve beside the old
/// one when both share a network namespace (`hostNetwork`, or the test cluster's nodes); the old
/// one's listeners go away when it exits. Without a shared netns it changes nothing.
fn bind(server: &'static str, address: SocketAddr) -> Result<std::net::TcpListener, AdminError> {
    let bind_error = |source| AdminError::Bind {
        server,
        address,
        source,
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(bind_error)?;
    socket.set_reuse_address(true).map_err(bind_error)?;
    socket.set_reuse_port(true).map_err(bind_error)?;
    socket.bind(&address.into()).map_err(bind_error)?;
    socket.listen(128).map_err(bind_error)?;
    socket.set_nonblocking(true).map_err(bind_error)?;
    Ok(socket.into())
}

fn local_address(listener: &std::net::TcpListener, requested: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(requested)
}

impl AdminServers {
    /// Binds the three listeners (so a taken port fails here, not later) and serves them on a
    /// dedicated thread.
    pub fn start(config: &AdminConfig, sources: AdminSources) -> Result<Self, AdminError> {
        if !config.admin_address.ip().is_loopback() {
            return Err(AdminError::AdminNotLoopback(config.admin_address));
        }
        let admin = bind("admin", config.admin_address)?;
        let metrics = bind("metrics", config.metrics_address)?;
        let readiness = bind("readiness", config.readiness_address)?;
        let addresses = (
            local_address(&admin, config.admin_address),
            local_address(&metrics, config.metrics_address),
            local_address(&readiness, config.readiness_address),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AdminError::Thread)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let routes = [
            (admin, "admin", admin_route(sources.clone())),
            (metrics, "metrics", metrics_route(sources.metrics.clone())),
            (
                readiness,
                "readiness",
                readiness_route(sources.readiness.clone()),
            ),
        ];
        let thread = std::thread::Builder::new()
            .name("ztunnel-admin".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    for (listener, name, route) in routes {
                        match tokio::net::TcpListener::from_std(listener) {
                            Ok(listener) => {
                                tokio::spawn(serve(listener, name, route));
                            }
                            Err(error) => tracing::error!(server = name, %error, "cannot serve"),
                        }
                    }
                    // Runs until AdminServers is dropped.
                    let _ = stopped.await;
                });
            })
            .map_err(AdminError::Thread)?;
        tracing::info!(admin = %addresses.0, metrics = %addresses.1, readiness = %addresses.2,
            "operations servers listening");
        Ok(Self {
            admin_address: addresses.0,
            metrics_address: addresses.1,
            readiness_address: addresses.2,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for AdminServers {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn admin_route(sources: AdminSources) -> Route {
    Arc::new(move |method, path| match (method, path) {
        (&Method::GET, "/config_dump") => {
            let state = sources.state.snapshot();
            let reload = sources
                .reload
                .as_ref()
                .map(|updates| updates.borrow().clone());
            let xds = sources.xds.as_ref().map(|updates| updates.borrow().clone());
            match config_dump::render(
                &state,
                sources.certificates.as_ref(),
                reload.as_ref(),
                xds.as_ref(),
            ) {
                Ok(json) => respond(StatusCode::OK, "application/json", json),
                Err(error) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot render the configuration: {error}\n"),
                ),
            }
        }
        (&Method::GET, "/") => text(
            StatusCode::OK,
            "/config_dump: workloads, services, policies, certificates\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found; try /config_dump\n"),
    })
}

fn metrics_route(metrics: Metrics) -> Route {
    Arc::new(move |method, path| match (method, path) {
        (&Method::GET, "/metrics" | "/stats/prometheus") => match metrics.encode() {
            Ok(body) => respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body,
            ),
            Err(error) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode metrics: {error}\n"),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found; try /metrics\n"),
    })
}

fn readiness_route(readiness: Readiness) -> Route {
    Arc::new(move |method, path| match (method, path) {
        (&Method::GET, "/healthz/ready") => match readiness.not_ready_because() {
            None => text(StatusCode::OK, "ready\n"),
            Some(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found; try /healthz/ready\n"),
    })
}

#[cfg(test)]
mod tests;
