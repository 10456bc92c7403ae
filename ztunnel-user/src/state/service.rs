//! A service: VIPs, ports and the workloads behind them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{GatewayAddress, HealthStatus, NetworkAddress, compat};

/// One service. Field names and spellings are those of Istio ztunnel's local configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    /// The Kubernetes service name.
    pub name: String,
    /// The Kubernetes namespace.
    pub namespace: String,
    /// Its DNS name, e.g. `echo.default.svc.cluster.local`; waypoints refer to services by it.
    pub hostname: String,
    /// Its virtual IPs, written `network/ip`.
    #[serde(default)]
    pub vips: Vec<NetworkAddress>,
    /// Service port → target port on the endpoints (0: the same as the service port).
    #[serde(default)]
    pub ports: BTreeMap<u16, u16>,
    /// Identities a server behind this service may present, besides the endpoint's own.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// Endpoints keyed by workload uid; endpoints named by workloads' `services` are added here.
    #[serde(default)]
    pub endpoints: BTreeMap<String, Endpoint>,
    /// Traffic to this service goes to this waypoint instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<GatewayAddress>,
    /// Whether this is the canonical definition of the hostname (informational).
    #[serde(default)]
    pub canonical: bool,
    /// Accepted for files Istio wrote; only `Public`.
    #[serde(default, skip_serializing_if = "compat::is_default")]
    pub visibility: compat::Visibility,
    /// Accepted for files Istio wrote; only empty.
    #[serde(default, deserialize_with = "compat::no_cidr_vips", skip_serializing)]
    pub cidr_vips: Vec<()>,
    /// Accepted for files Istio wrote; only empty.
    #[serde(
        default,
        deserialize_with = "compat::no_weighted_waypoints",
        skip_serializing
    )]
    pub weighted_waypoints: Vec<()>,
}

/// A workload behind a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// The workload's uid.
    pub workload_uid: String,
    /// Service port → target port for this endpoint, overriding the service's `ports`.
    #[serde(default)]
    pub port: BTreeMap<u16, u16>,
    /// Readiness; unhealthy endpoints are never picked.
    #[serde(default)]
    pub status: HealthStatus,
}

impl Service {
    /// `namespace/hostname`, the key waypoints and workloads use to name it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }

    /// The port an endpoint listens on for `service_port`, or `None` if the service does not
    /// expose that port.
    pub fn target_port(&self, endpoint: &Endpoint, service_port: u16) -> Option<u16> {
        let target = match endpoint.port.get(&service_port) {
            Some(port) => *port,
            None => *self.ports.get(&service_port)?,
        };
        Some(if target == 0 { service_port } else { target })
    }
}
