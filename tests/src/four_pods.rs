//! Two nodes with a client and a server pod each, all in the mesh, and both ztunnels running:
//! the topology the node-failure tests (`nspof_*`) drive traffic through.

use crate::cluster::{Cluster, ClusterPod};

/// The workload config: host-local hands out .2, .3 in creation order on each node, which
/// [`FourPods::start`] checks.
pub const MESH: &str = r#"
workloads:
- {uid: t//client1, name: client1, namespace: default, serviceAccount: client1, workloadIps: ["198.18.1.2"], protocol: HBONE, node: node-1}
- {uid: t//server1, name: server1, namespace: default, serviceAccount: server1, workloadIps: ["198.18.1.3"], protocol: HBONE, node: node-1}
- {uid: t//client2, name: client2, namespace: default, serviceAccount: client2, workloadIps: ["198.18.2.2"], protocol: HBONE, node: node-2}
- {uid: t//server2, name: server2, namespace: default, serviceAccount: server2, workloadIps: ["198.18.2.3"], protocol: HBONE, node: node-2}
"#;

/// The four pods and their cluster.
pub struct FourPods {
    /// Client on node 1 (198.18.1.2).
    pub client1: ClusterPod,
    /// Server on node 1 (198.18.1.3).
    pub server1: ClusterPod,
    /// Client on node 2 (198.18.2.2).
    pub client2: ClusterPod,
    /// Server on node 2 (198.18.2.3).
    pub server2: ClusterPod,
    /// Dropped last: pods (CNI DEL) go before the nodes and the underlay.
    pub cluster: Cluster,
}

impl FourPods {
    /// Builds the cluster for `test`, starts both ztunnels and creates the four pods.
    pub fn start(test: &str) -> anyhow::Result<Self> {
        let mut cluster = Cluster::new(test, 2, MESH)?;
        cluster.node_mut(1).start_ztunnel(&[])?;
        cluster.node_mut(2).start_ztunnel(&[])?;
        Self::in_cluster(cluster)
    }

    /// Creates the four pods in `cluster` (built with [`MESH`]), whose ztunnels the caller has
    /// started its own way, and checks their addresses.
    pub fn in_cluster(cluster: Cluster) -> anyhow::Result<Self> {
        let client1 = cluster.pod(1, "default", "client1")?;
        let server1 = cluster.pod(1, "default", "server1")?;
        let client2 = cluster.pod(2, "default", "client2")?;
        let server2 = cluster.pod(2, "default", "server2")?;
        for (pod, expected) in [
            (&client1, "198.18.1.2"),
            (&server1, "198.18.1.3"),
            (&client2, "198.18.2.2"),
            (&server2, "198.18.2.3"),
        ] {
            anyhow::ensure!(
                pod.ip.to_string() == expected,
                "pod {} got {} from host-local, the mesh config says {expected}",
                pod.name,
                pod.ip
            );
        }
        Ok(Self {
            client1,
            server1,
            client2,
            server2,
            cluster,
        })
    }
}
