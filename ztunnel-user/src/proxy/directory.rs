//! What the proxy asks about workloads, services and policy, per connection.
//!
//! The proxy depends on this small trait rather than on the store directly: the daemon
//! implements it over `state::StateHandle` + `authz` (each call reads the current snapshot, so
//! a config reload applies to the next connection), tests over a fixed table.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use ztunnel_common::constants::HBONE_PORT;

use crate::identity::SpiffeId;

/// The facts about a workload the proxy logs and checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadInfo {
    /// Stable id (`uid` in the config).
    pub uid: String,
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// SPIFFE identity (trust domain, namespace, service account).
    pub identity: SpiffeId,
    /// The pod's addresses.
    pub ips: Vec<IpAddr>,
}

impl WorkloadInfo {
    /// A workload with one address, named after its service account.
    pub fn new(identity: SpiffeId, ip: IpAddr) -> Self {
        Self {
            uid: format!("{}/{}/{}", identity.namespace, identity.service_account, ip),
            name: identity.service_account.clone(),
            namespace: identity.namespace.clone(),
            identity,
            ips: vec![ip],
        }
    }
}

/// Where an outbound connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundRoute {
    /// Through an HBONE tunnel.
    Hbone {
        /// The HBONE server (`pod_ip:15008`, or a waypoint's).
        hbone_address: SocketAddr,
        /// The `:authority` (the chosen endpoint `ip:port`).
        authority: SocketAddr,
        /// The identities the server may prove.
        expected: Vec<SpiffeId>,
    },
    /// Plain TCP to `address` (a destination outside the mesh).
    Passthrough {
        /// Where to connect.
        address: SocketAddr,
    },
    /// Refuse the connection (e.g. a service without a healthy endpoint).
    Refuse {
        /// Why, for the log.
        reason: String,
    },
}

/// An inbound connection as policy sees it.
#[derive(Debug, Clone)]
pub struct InboundConnection<'a> {
    /// The peer's proven identity (none for plaintext).
    pub source_identity: Option<&'a SpiffeId>,
    /// The original source address.
    pub source: SocketAddr,
    /// The original destination.
    pub destination: SocketAddr,
    /// The destination workload.
    pub destination_workload: &'a WorkloadInfo,
}

/// The proxy's view of the mesh configuration.
pub trait Directory: Send + Sync + 'static {
    /// Where a connection from `source` to `original_destination` should go.
    fn route_outbound(
        &self,
        source: &WorkloadInfo,
        original_destination: SocketAddr,
    ) -> OutboundRoute;
    /// The workload that owns `ip`, if it is known.
    fn workload(&self, ip: IpAddr) -> Option<WorkloadInfo>;
    /// Whether policy allows an inbound connection.
    fn authorize(&self, connection: &InboundConnection<'_>) -> bool;
    /// The `baggage` header value describing the workload at `ip` (sent on its outbound
    /// `CONNECT`s and on `200` answers to its inbound ones), if known.
    fn baggage(&self, _ip: IpAddr) -> Option<String> {
        None
    }
    /// Tells the balancer `address` refused a connection, so it is skipped for a while.
    fn report_refused(&self, _address: SocketAddr) {}
    /// Where a waypoint sends a connection it accepted for `original_destination`: straight to
    /// the destination workload (a service VIP is resolved to one endpoint), never to a
    /// waypoint again. A directory that knows no waypoints refuses.
    fn route_from_waypoint(&self, original_destination: SocketAddr) -> OutboundRoute {
        OutboundRoute::Refuse {
            reason: format!("{original_destination}: this directory does not serve waypoints"),
        }
    }
    /// When the workload at `ip` sits behind a waypoint, the identities its replicas present:
    /// inbound HBONE from any other identity did not come through the waypoint and is refused.
    /// `None` when the workload has no waypoint (or is unknown).
    fn waypoint_identities(&self, _ip: IpAddr) -> Option<Vec<SpiffeId>> {
        None
    }
    /// Whether `identity` is a waypoint's: a waypoint relays other workloads' connections, so
    /// the source address it forwards belongs to another identity by design.
    fn is_waypoint(&self, _identity: &SpiffeId) -> bool {
        false
    }
}

/// How a [`StaticDirectory`] workload is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticWorkload {
    /// The workload.
    pub info: WorkloadInfo,
    /// HBONE capable (`protocol: HBONE`) or not.
    pub hbone: bool,
    /// Port of its HBONE listener (15008 unless a test moved it).
    pub hbone_port: u16,
}

/// A fixed directory for tests, benchmarks and single-machine use: workloads by address,
/// and a list of denied source identities.
#[derive(Debug, Default, Clone)]
pub struct StaticDirectory {
    workloads: HashMap<IpAddr, StaticWorkload>,
    denied: Vec<SpiffeId>,
}

impl StaticDirectory {
    /// An empty directory: everything is passthrough.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a workload; `hbone` says whether it speaks HBONE.
    pub fn with_workload(self, info: WorkloadInfo, hbone: bool) -> Self {
        self.insert(StaticWorkload {
            info,
            hbone,
            hbone_port: HBONE_PORT,
        })
    }

    /// Adds an HBONE workload whose HBONE listener is on `hbone_port` instead of 15008 (tests
    /// on a shared host, where 15008 may be taken).
    pub fn with_hbone_workload_on_port(self, info: WorkloadInfo, hbone_port: u16) -> Self {
        self.insert(StaticWorkload {
            info,
            hbone: true,
            hbone_port,
        })
    }

    fn insert(mut self, workload: StaticWorkload) -> Self {
        for ip in &workload.info.ips {
            self.workloads.insert(*ip, workload.clone());
        }
        self
    }

    /// Denies inbound connections from `identity` (answered 401).
    pub fn deny(mut self, identity: SpiffeId) -> Self {
        self.denied.push(identity);
        self
    }
}

impl Directory for StaticDirectory {
    fn route_outbound(
        &self,
        _source: &WorkloadInfo,
        original_destination: SocketAddr,
    ) -> OutboundRoute {
        match self.workloads.get(&original_destination.ip()) {
            Some(workload) if workload.hbone => OutboundRoute::Hbone {
                hbone_address: SocketAddr::new(original_destination.ip(), workload.hbone_port),
                authority: original_destination,
                expected: vec![workload.info.identity.clone()],
            },
            _ => OutboundRoute::Passthrough {
                address: original_destination,
            },
        }
    }

    fn workload(&self, ip: IpAddr) -> Option<WorkloadInfo> {
        self.workloads
            .get(&ip)
            .map(|workload| workload.info.clone())
    }

    fn authorize(&self, connection: &InboundConnection<'_>) -> bool {
        !connection
            .source_identity
            .is_some_and(|identity| self.denied.contains(identity))
    }
}
