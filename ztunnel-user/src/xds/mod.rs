//! Workloads, services and policies from istiod over delta xDS (Istio ztunnel's discovery
//! protocol), as an alternative to the configuration file: resources become the same
//! [`crate::state::State`] the file produces, so routing, authorization, metrics and waypoints
//! do not know where their state came from (docs/architecture.md, "xDS").
//!
//! - [`transport`]: TLS to istiod against the mesh root, the bearer token and cluster id.
//! - [`client`]: the stream, ACK/NACK, reconnect with backoff.
//! - [`store`]: resources by type and name, and the state they make.
//! - [`convert`]: one resource into the file model's types.

pub mod client;
pub mod convert;
pub mod status;
pub mod store;
pub mod transport;

use std::{path::PathBuf, sync::Arc};

pub use client::XdsClient;
pub use status::XdsStatus;
pub use store::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
pub use transport::ControlPlaneAddress;

use crate::proto::envoy::service::discovery::v3::Node;

/// Why the xDS client cannot start, or why one stream ended.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// `--xds-address` is malformed.
    #[error(
        "invalid control plane address {address:?}: {why} (expected https://host:port, e.g. https://istiod.istio-system.svc:15012)"
    )]
    Address {
        /// As given.
        address: String,
        /// What is wrong.
        why: String,
    },
    /// `--xds-root-cert` cannot be used.
    #[error(
        "cannot use the xDS root certificate {path}: {detail} (pass the mesh root in PEM with --xds-root-cert)"
    )]
    RootCert {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The TLS configuration cannot be built.
    #[error("cannot build the TLS configuration for xDS: {0}")]
    Tls(String),
    /// `--token-file` cannot be read.
    #[error("cannot read the service-account token {path}: {detail} (check --token-file)")]
    Token {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// No connection to the control plane.
    #[error("cannot connect to the control plane {address}: {detail}")]
    Connect {
        /// The address.
        address: String,
        /// What went wrong, with causes.
        detail: String,
    },
    /// The stream failed with a gRPC status.
    #[error("xDS stream error: {0}")]
    Stream(String),
    /// The request stream closed under us.
    #[error("the xDS request stream closed")]
    StreamClosed,
}

/// Who this proxy is, as the node id and metadata tell istiod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The ztunnel pod's IP (`INSTANCE_IP`).
    pub instance_ip: String,
    /// The ztunnel pod's name (`POD_NAME`).
    pub pod_name: String,
    /// The ztunnel pod's namespace (`POD_NAMESPACE`).
    pub pod_namespace: String,
    /// The Kubernetes node (`NODE_NAME`).
    pub node_name: String,
    /// The cluster (`CLUSTER_ID`).
    pub cluster_id: String,
}

impl NodeIdentity {
    /// The node id, in the form Istio's ztunnel uses:
    /// `ztunnel~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`.
    pub fn id(&self) -> String {
        let Self {
            instance_ip,
            pod_name,
            pod_namespace,
            ..
        } = self;
        format!(
            "ztunnel~{instance_ip}~{pod_name}.{pod_namespace}~{pod_namespace}.svc.cluster.local"
        )
    }

    /// The node message of the initial requests: the id and the metadata keys Istio's ztunnel
    /// sends (`NAME`, `NAMESPACE`, `INSTANCE_IPS`, `NODE_NAME`, `CLUSTER_ID`).
    pub fn to_proto(&self) -> Node {
        let fields = [
            ("NAME", &self.pod_name),
            ("NAMESPACE", &self.pod_namespace),
            ("INSTANCE_IPS", &self.instance_ip),
            ("NODE_NAME", &self.node_name),
            ("CLUSTER_ID", &self.cluster_id),
        ]
        .into_iter()
        .map(|(key, value)| {
            (
                key.to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(value.clone())),
                },
            )
        })
        .collect();
        Node {
            id: self.id(),
            metadata: Some(prost_types::Struct { fields }),
            ..Node::default()
        }
    }
}

/// Everything the client needs, checked at start.
#[derive(Debug, Clone)]
pub struct XdsConfig {
    /// istiod.
    pub address: ControlPlaneAddress,
    /// Trusts the mesh root only.
    pub tls: Arc<rustls::ClientConfig>,
    /// The projected service-account token, if any.
    pub token_file: Option<PathBuf>,
    /// Sent as the `clusterid` header.
    pub cluster_id: String,
    /// The node id and metadata.
    pub node: NodeIdentity,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_and_metadata_are_istios() {
        let node = NodeIdentity {
            instance_ip: "10.0.0.5".into(),
            pod_name: "ztunnel-abcde".into(),
            pod_namespace: "istio-system".into(),
            node_name: "node-1".into(),
            cluster_id: "Kubernetes".into(),
        }
        .to_proto();
        assert_eq!(
            node.id,
            "ztunnel~10.0.0.5~ztunnel-abcde.istio-system~istio-system.svc.cluster.local"
        );
        let metadata = node.metadata.unwrap().fields;
        let mut keys: Vec<&str> = metadata.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "CLUSTER_ID",
                "INSTANCE_IPS",
                "NAME",
                "NAMESPACE",
                "NODE_NAME"
            ]
        );
    }
}
