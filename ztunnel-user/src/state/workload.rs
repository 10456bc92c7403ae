//! A workload (a pod, usually) as the configuration file describes it.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::{GatewayAddress, compat};
use crate::identity::{SpiffeId, spiffe::DEFAULT_TRUST_DOMAIN};

/// The service account a workload runs as when the file does not name one (Kubernetes' default).
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// How a workload accepts mesh traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// Plain TCP: the workload is not in the mesh, traffic to it is passed through.
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// HBONE: traffic to it goes through an mTLS HTTP/2 CONNECT tunnel to port 15008.
    #[serde(rename = "HBONE")]
    Hbone,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Hbone => "HBONE",
        })
    }
}

/// Whether a workload may receive traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HealthStatus {
    /// Ready to receive traffic.
    #[default]
    Healthy,
    /// Not ready: never picked as a service endpoint.
    Unhealthy,
}

/// One workload. Field names and spellings are those of Istio ztunnel's local configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    /// A cluster-unique id, e.g. `cluster1//v1/Pod/default/sleep-1`; service endpoints refer to it.
    #[serde(default)]
    pub uid: String,
    /// The pod name.
    #[serde(default)]
    pub name: String,
    /// The Kubernetes namespace.
    pub namespace: String,
    /// The SPIFFE trust domain; `cluster.local` when the file leaves it out.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// The service account; `default` when the file leaves it out.
    #[serde(default = "default_service_account")]
    pub service_account: String,
    /// The pod's addresses.
    #[serde(default)]
    pub workload_ips: Vec<IpAddr>,
    /// Whether it speaks HBONE.
    #[serde(default)]
    pub protocol: Protocol,
    /// The node it runs on.
    #[serde(default)]
    pub node: String,
    /// The network it is on; empty for the default network.
    #[serde(default)]
    pub network: String,
    /// Traffic to this workload goes to this waypoint instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<GatewayAddress>,
    /// The owning workload's name (e.g. the Deployment), for metrics.
    #[serde(default)]
    pub workload_name: String,
    /// The owning workload's kind, e.g. `deployment`.
    #[serde(default)]
    pub workload_type: String,
    /// The canonical service (`app` label), for metrics.
    #[serde(default)]
    pub canonical_name: String,
    /// The canonical revision (`version` label), for metrics.
    #[serde(default)]
    pub canonical_revision: String,
    /// A DNS name of the workload, if any.
    #[serde(default)]
    pub hostname: String,
    /// The cluster it belongs to, for metrics.
    #[serde(default)]
    pub cluster_id: String,
    /// Keys (`namespace/name`) of the workload-scoped policies that select this workload.
    #[serde(default)]
    pub authorization_policies: Vec<String>,
    /// Readiness; an unhealthy workload is never picked as a service endpoint.
    #[serde(default)]
    pub status: HealthStatus,
    /// Accepted for files Istio wrote; only `Standard`.
    #[serde(default, skip_serializing_if = "compat::is_default")]
    pub network_mode: compat::NetworkMode,
    /// Accepted for files Istio wrote; only 1.
    #[serde(
        default = "compat::default_capacity",
        deserialize_with = "compat::capacity"
    )]
    pub capacity: u32,
    /// Accepted for files Istio wrote; only false.
    #[serde(
        default,
        deserialize_with = "compat::no_native_tunnel",
        skip_serializing_if = "compat::is_default"
    )]
    pub native_tunnel: bool,
    /// Where it runs (informational).
    #[serde(default, skip_serializing_if = "compat::is_default")]
    pub locality: compat::Locality,
    /// The services this workload is an endpoint of: `namespace/hostname` → service port → target port.
    #[serde(default)]
    pub services: BTreeMap<String, BTreeMap<u16, u16>>,
}

fn default_trust_domain() -> String {
    DEFAULT_TRUST_DOMAIN.to_owned()
}

fn default_service_account() -> String {
    DEFAULT_SERVICE_ACCOUNT.to_owned()
}

impl Workload {
    /// A pod ztunnel serves (it is enrolled) that the config does not list: only its name,
    /// namespace, identity and addresses are known; every other field takes the value a config
    /// file leaving it out would give. Global and namespace-scoped policies still apply to it.
    pub fn unlisted(
        name: &str,
        namespace: &str,
        identity: &SpiffeId,
        ips: &[IpAddr],
    ) -> Result<Self, serde_json::Error> {
        serde_json::from_value(serde_json::json!({
            "name": name,
            "namespace": namespace,
            "trustDomain": identity.trust_domain,
            "serviceAccount": identity.service_account,
            "workloadIps": ips,
            "protocol": "HBONE",
        }))
    }

    /// The SPIFFE id its certificate carries.
    pub fn identity(&self) -> SpiffeId {
        SpiffeId::new(&self.trust_domain, &self.namespace, &self.service_account)
    }

    /// `namespace/name`, for logs and errors.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_trust_domain_and_service_account_take_istio_defaults() {
        let workload: Workload = serde_norway::from_str("namespace: ns1\nname: a\n").unwrap();
        assert_eq!(
            workload.identity().to_string(),
            "spiffe://cluster.local/ns/ns1/sa/default"
        );
        assert_eq!(workload.protocol, Protocol::Tcp);
    }

    #[test]
    fn protocol_is_spelled_as_istio_spells_it() {
        let workload: Workload = serde_norway::from_str(
            "namespace: a\nprotocol: HBONE\ntrustDomain: example.org\nserviceAccount: s\n",
        )
        .unwrap();
        assert_eq!(workload.protocol, Protocol::Hbone);
        assert_eq!(
            workload.identity().to_string(),
            "spiffe://example.org/ns/a/sa/s"
        );
        assert!(serde_norway::from_str::<Workload>("namespace: a\nprotocol: hbone\n").is_err());
    }
}
