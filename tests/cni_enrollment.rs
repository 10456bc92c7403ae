//! Pods created the way a container runtime creates them — `ptp` + `host-local` from
//! containernetworking-plugins with `ztunnel-cni` chained last — are enrolled on their own node
//! only, are captured, and `DEL` removes every trace of them; a pod outside the mesh config is
//! passed through untouched.

use ztunnel_e2e::cluster::Cluster;

const MESH: &str = r#"
workloads:
- uid: test//v1/Pod/default/client
  name: client
  namespace: default
  serviceAccount: client
  workloadIps: ["198.18.1.2"]
  protocol: HBONE
  node: node-1
- uid: test//v1/Pod/default/server
  name: server
  namespace: default
  serviceAccount: server
  workloadIps: ["198.18.2.2"]
  protocol: HBONE
  node: node-2
"#;

fn pod_names(inspect_json: &str) -> anyhow::Result<Vec<String>> {
    let rows: serde_json::Value = serde_json::from_str(inspect_json.trim())?;
    let mut names: Vec<String> = rows
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|row| {
            Some(format!(
                "{}/{}",
                row["namespace"].as_str()?,
                row["name"].as_str()?
            ))
        })
        .collect();
    names.sort();
    Ok(names)
}

#[test]
fn cni_chain_enrolls_pods_on_their_own_node_and_del_removes_them() -> anyhow::Result<()> {
    let mut cluster = Cluster::new("cni_enrollment", 2, MESH)?;
    cluster.node_mut(1).start_ztunnel(&[])?;
    cluster.node_mut(2).start_ztunnel(&[])?;

    let mut client = cluster.pod(1, "default", "client")?;
    let server = cluster.pod(2, "default", "server")?;
    let outsider = cluster.pod(1, "default", "outsider")?;
    println!(
        "client {} server {} outsider {}",
        client.ip, server.ip, outsider.ip
    );
    assert_eq!(
        client.ip.to_string(),
        "198.18.1.2",
        "host-local's first address on node 1"
    );
    assert_eq!(
        server.ip.to_string(),
        "198.18.2.2",
        "host-local's first address on node 2"
    );
    assert_eq!(
        client.cni_result["ips"][0]["address"], "198.18.1.2/24",
        "ADD passes the primary's result through"
    );

    let node1_pods = pod_names(
        &cluster
            .node(1)
            .ztunnel_cli(&["inspect", "pods", "--json"])?,
    )?;
    let node2_pods = pod_names(
        &cluster
            .node(2)
            .ztunnel_cli(&["inspect", "pods", "--json"])?,
    )?;
    println!("node 1 enrolled {node1_pods:?}; node 2 enrolled {node2_pods:?}");
    assert_eq!(
        node1_pods,
        vec!["default/client"],
        "node 1 lists exactly its mesh pods"
    );
    assert_eq!(
        node2_pods,
        vec!["default/server"],
        "node 2 lists exactly its mesh pods"
    );

    client.check()?;
    let _ = &outsider;

    client.delete()?;
    let after_del = pod_names(
        &cluster
            .node(1)
            .ztunnel_cli(&["inspect", "pods", "--json"])?,
    )?;
    let workloads = cluster
        .node(1)
        .ztunnel_cli(&["inspect", "workloads", "--json"])?;
    println!("node 1 after DEL of client: pods {after_del:?}, workloads {workloads}");
    assert!(after_del.is_empty(), "DEL removed the pod entry");
    assert!(
        !workloads.contains("198.18.1.2"),
        "DEL removed the workload entry"
    );
    assert!(client.check().is_err(), "CHECK fails for a deleted pod");
    Ok(())
}
