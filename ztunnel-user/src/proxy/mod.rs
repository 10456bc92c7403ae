//! The proxy: what happens to each connection a listener accepts.
//!
//! - [`outbound`]: a pod's outgoing connection (listener 15001) → HBONE tunnel or passthrough.
//! - [`inbound`]: HBONE from other nodes (listener 15008) → the local application;
//!   [`forwarded`] decides which source address its streams are credited with.
//! - [`passthrough`]: plaintext to a pod (listener 15006) → policy → the local application.
//! - [`copy`]: the TCP↔TCP copy loop; the TCP↔tunnel one is in [`crate::hbone::stream`].
//! - [`directory`]: what the proxy needs to know about workloads and policy.
//! - [`access_log`], [`metrics`], [`drain`]: one log line per closed connection, counters,
//!   and SIGTERM draining.
//! - [`listeners`]: accept loops on ordinary listeners (tests, benchmarks, the in-pod ones).
//! - [`limits`]: handshake and idle timeouts, and the cap on one pod's open connections.
//! - [`connections`]: open inbound connections, closed when a new mesh state refuses them.
//!
//! Each entry point takes the shared [`ProxyContext`], the [`PodContext`] of the pod whose
//! listener accepted the connection, and the accepted socket.

pub mod access_log;
pub mod connections;
pub mod copy;
pub mod directory;
pub mod drain;
pub mod forwarded;
pub mod inbound;
pub mod istio_metrics;
pub mod limits;
pub mod listeners;
pub mod metrics;
pub mod observer;
pub mod outbound;
pub mod passthrough;
pub mod retry;
pub mod state_directory;
pub mod upstream;

use std::{net::IpAddr, sync::Arc};

use tokio_rustls::TlsAcceptor;

pub use directory::{Directory, InboundConnection, OutboundRoute, WorkloadInfo};
pub use drain::{Drain, DrainWatch};
pub use limits::ProxyLimits;
pub use metrics::ProxyMetrics;
pub use observer::ConnectionObserver;

use crate::{
    hbone::{HboneError, HbonePool},
    identity::{CertificateStore, IdentityError, tls},
    socket::SocketFactory,
};

/// State shared by every connection of the node.
pub struct ProxyContext {
    /// Workloads, services and policy, read per connection.
    pub directory: Arc<dyn Directory>,
    /// Workload certificates.
    pub certificates: Arc<CertificateStore>,
    /// Outgoing HBONE connections.
    pub pool: Arc<HbonePool>,
    /// Counters.
    pub metrics: Arc<ProxyMetrics>,
    /// Tells listeners and connections to wind down.
    pub drain: DrainWatch,
    /// Where connection events are exported (Istio metrics in the daemon).
    pub observer: Arc<dyn ConnectionObserver>,
    /// Timeouts and per-pod caps.
    pub limits: ProxyLimits,
    /// Open inbound connections, re-checked when the mesh state changes.
    pub connections: Arc<connections::ConnectionManager>,
}

impl ProxyContext {
    /// A context with a fresh pool and counters over `directory` and `certificates`.
    pub fn new(
        directory: Arc<dyn Directory>,
        certificates: Arc<CertificateStore>,
        drain: DrainWatch,
    ) -> Arc<Self> {
        Self::with_observer(
            directory,
            certificates,
            drain,
            Arc::new(observer::NoObserver),
        )
    }

    /// Like [`new`](Self::new), exporting connection events to `observer`.
    pub fn with_observer(
        directory: Arc<dyn Directory>,
        certificates: Arc<CertificateStore>,
        drain: DrainWatch,
        observer: Arc<dyn ConnectionObserver>,
    ) -> Arc<Self> {
        Self::with_limits(
            directory,
            certificates,
            drain,
            observer,
            ProxyLimits::default(),
        )
    }

    /// Like [`with_observer`](Self::with_observer), with `limits` instead of the defaults.
    pub fn with_limits(
        directory: Arc<dyn Directory>,
        certificates: Arc<CertificateStore>,
        drain: DrainWatch,
        observer: Arc<dyn ConnectionObserver>,
        limits: ProxyLimits,
    ) -> Arc<Self> {
        let metrics = Arc::new(ProxyMetrics::default());
        let pool = {
            let (metrics, observer) = (metrics.clone(), observer.clone());
            HbonePool::new(certificates.clone()).with_keepalive(limits.keepalive, move |_server| {
                let (side, reason) = (
                    metrics::HandshakeSide::Outbound,
                    metrics::HboneClose::PingTimeout,
                );
                metrics.hbone_closed(side, reason);
                observer.hbone_closed(side, reason);
            })
        };
        Arc::new(Self {
            directory,
            pool: Arc::new(pool),
            certificates,
            metrics,
            drain,
            observer,
            limits,
            connections: Arc::default(),
        })
    }

    /// Closes open inbound connections that the directory's state refuses, each time `changes`
    /// reports a new state (see [`connections`]); runs until the task is dropped or the state's
    /// sender is gone.
    pub fn close_refused_on_change(
        &self,
        changes: tokio::sync::watch::Receiver<u64>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(connections::close_refused_on_change(
            self.connections.clone(),
            self.directory.clone(),
            changes,
        ))
    }

    /// An established connection was closed because a new mesh state refused it: counted here
    /// and exported.
    pub(crate) fn closed_by_policy(&self, record: &access_log::ConnectionRecord) {
        self.metrics
            .policy_closures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.observer.closed_by_policy(record);
    }

    /// A connection is established end to end; what is returned goes into its
    /// [`Outcome::Closed`](outbound::Outcome::Closed).
    pub(crate) fn opened(
        &self,
        record: &access_log::ConnectionRecord,
    ) -> Box<dyn observer::OpenConnection> {
        self.metrics
            .connections_opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.observer.opened(record)
    }

    /// The HBONE server at `address` could not be reached (`reason`) and the connection was
    /// routed to another one: counted here and exported.
    pub(crate) fn endpoint_retried(&self, address: std::net::SocketAddr, reason: &'static str) {
        self.metrics
            .endpoint_retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.observer.endpoint_retried(address, reason);
    }

    /// A handshake failed for `reason`: counted here and exported.
    pub(crate) fn identity_failure(&self, side: metrics::HandshakeSide, reason: &'static str) {
        self.metrics.handshake_failed(side, reason);
        self.observer.identity_failure(side, reason);
    }

    /// A connection was refused before it was proxied (a limit was reached, an untrusted
    /// source claim, a loop): counted here and exported.
    pub(crate) fn refused(&self, reason: metrics::RefusalReason) {
        self.metrics.refused(reason);
        self.observer.refused(reason);
    }

    /// Our HBONE server (`Inbound`) or client (`Outbound`) closed a connection its peer had
    /// not closed: counted here and exported.
    pub(crate) fn hbone_closed(&self, side: metrics::HandshakeSide, reason: metrics::HboneClose) {
        self.metrics.hbone_closed(side, reason);
        self.observer.hbone_closed(side, reason);
    }
}

/// The pod whose listener accepted a connection: who it is, and where its sockets are made.
pub struct PodContext {
    /// The pod's workload.
    pub workload: WorkloadInfo,
    /// Makes sockets inside the pod's netns (so they leave with the pod's address).
    pub sockets: Arc<dyn SocketFactory>,
    /// TLS server side of the pod's HBONE listener, presenting the pod's identity.
    pub acceptor: TlsAcceptor,
    /// The pod's open outbound connections, against [`ProxyLimits::max_connections_per_pod`].
    pub connections: Arc<limits::ConnectionSlots>,
    /// Keeps the pod's certificate renewed (and asked for) while the pod is served.
    _certificate: crate::identity::store::CertificateLease,
}

impl PodContext {
    /// A pod context; its HBONE listener presents `workload`'s current certificate.
    pub fn new(
        workload: WorkloadInfo,
        sockets: Arc<dyn SocketFactory>,
        certificates: &Arc<CertificateStore>,
    ) -> Result<Arc<Self>, IdentityError> {
        let config = tls::server_config(certificates.clone(), workload.identity.clone())?;
        // From Istio's CA the certificate is fetched in the background: ask for it now, and
        // keep it renewed while this pod is served.
        let certificate = certificates.lease(&workload.identity);
        Ok(Arc::new(Self {
            workload,
            sockets,
            acceptor: TlsAcceptor::from(config),
            connections: Arc::default(),
            _certificate: certificate,
        }))
    }

    /// Whether `ip` is one of the pod's addresses.
    pub fn owns(&self, ip: IpAddr) -> bool {
        self.workload.ips.contains(&ip)
    }
}

/// Why a proxied connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The HBONE side failed.
    #[error(transparent)]
    Hbone(#[from] HboneError),
    /// A plain TCP connection to the destination failed.
    #[error("cannot connect to {address}: {source}")]
    Upstream {
        /// The destination.
        address: std::net::SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// An established connection ended with an error while bytes were flowing (a peer reset
    /// or closed abruptly); the bytes moved until then are in the access log line.
    #[error("connection via {address} ended abruptly after it was established: {source}")]
    Interrupted {
        /// The peer the bytes went to (upstream address or HBONE hop).
        address: std::net::SocketAddr,
        /// The socket or stream error.
        source: std::io::Error,
    },
    /// The accepted socket could not be inspected.
    #[error("cannot read the addresses of an accepted socket: {0}")]
    Socket(std::io::Error),
    /// The destination is known but cannot be reached (e.g. a service without endpoints).
    #[error("no route to {destination}: {reason}")]
    NoRoute {
        /// The original destination.
        destination: std::net::SocketAddr,
        /// Why.
        reason: String,
    },
}
