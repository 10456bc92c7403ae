//! Identity comes from the pod whose listener accepted a connection, never from addresses: a
//! pod that adds its neighbour's IP to its interface and connects from it still travels under
//! its own certificate, and the destination's ztunnel refuses the stream because the source
//! address it claims belongs to a workload of another identity (401, counted, logged).
//!
//! The neighbour is on the *same* node as the spoofer on purpose: that node's ztunnel holds the
//! neighbour's certificate too, so it is the one place an address-based identity lookup could
//! pick the wrong certificate.

use std::process::Output;

use ztunnel_e2e::{
    apps::Nginx,
    cluster::{Cluster, ClusterPod},
};

const MESH: &str = r#"
workloads:
- {uid: t//client, name: client, namespace: default, serviceAccount: client, workloadIps: ["198.18.1.2"], protocol: HBONE, node: node-1}
- {uid: t//neighbor, name: neighbor, namespace: default, serviceAccount: neighbor, workloadIps: ["198.18.1.3"], protocol: HBONE, node: node-1}
- {uid: t//web, name: web, namespace: default, serviceAccount: web, workloadIps: ["198.18.2.2"], protocol: HBONE, node: node-2}
"#;

const PAGE: &str = "web page for the spoof test\n";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const NEIGHBOR_ID: &str = "spiffe://cluster.local/ns/default/sa/neighbor";

fn curl(
    cluster: &Cluster,
    from: &ClusterPod,
    source: Option<&str>,
    to: &ClusterPod,
) -> anyhow::Result<Output> {
    let url = format!("http://{}/", to.ip);
    let mut argv = vec!["curl", "-sS", "--max-time", "10"];
    if let Some(source) = source {
        argv.extend(["--interface", source]);
    }
    argv.push(&url);
    let output = cluster.run_in_pod(from, &argv)?;
    println!(
        "curl {} (source {source:?}) -> {url}: {}, body {:?}, stderr {:?}",
        from.name,
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(output)
}

fn lines_with(text: &str, needles: &[&str]) -> Vec<String> {
    text.lines()
        .filter(|line| needles.iter().all(|needle| line.contains(needle)))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_pod_using_its_neighbours_address_keeps_its_identity_and_is_refused() -> anyhow::Result<()> {
    let mut cluster = Cluster::new("guard_spoof", 2, MESH)?;
    cluster.node_mut(1).start_ztunnel(&[])?;
    cluster.node_mut(2).start_ztunnel(&[])?;
    let client = cluster.pod(1, "default", "client")?;
    let neighbor = cluster.pod(1, "default", "neighbor")?;
    let web = cluster.pod(2, "default", "web")?;
    for (pod, expected) in [
        (&client, "198.18.1.2"),
        (&neighbor, "198.18.1.3"),
        (&web, "198.18.2.2"),
    ] {
        anyhow::ensure!(
            pod.ip.to_string() == expected,
            "pod {} got {}, config says {expected}",
            pod.name,
            pod.ip
        );
    }
    let nginx = Nginx::start(&cluster, &web, PAGE)?;

    let own = curl(&cluster, &client, None, &web)?;
    let neighbour_own = curl(&cluster, &neighbor, None, &web)?;
    let neighbor_ip = neighbor.ip.to_string();
    let added = cluster.run_in_pod(
        &client,
        &[
            "ip",
            "addr",
            "add",
            &format!("{neighbor_ip}/32"),
            "dev",
            "eth0",
        ],
    )?;
    anyhow::ensure!(
        added.status.success(),
        "cannot add {neighbor_ip} to the client pod: {}",
        String::from_utf8_lossy(&added.stderr)
    );
    let addresses = cluster.run_in_pod(&client, &["ip", "-br", "addr", "show", "dev", "eth0"])?;
    println!(
        "client pod eth0: {}",
        String::from_utf8_lossy(&addresses.stdout).trim()
    );
    let node1_before_spoof = cluster.node(1).ztunnel_log().len();
    let spoofed = curl(&cluster, &client, Some(&neighbor_ip), &web)?;

    let node1 = cluster.node(1).ztunnel_log().split_off(node1_before_spoof);
    let node2 = cluster.node(2).ztunnel_log();
    let spoofed_source = format!("{neighbor_ip}:");
    let outbound_records = lines_with(
        &node1,
        &["ztunnel::access", "direction=\"outbound\"", &spoofed_source],
    );
    let refusals = lines_with(&node2, &["belongs to a workload of another identity"]);
    let metrics_output = cluster.node(2).run(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "http://127.0.0.1:15020/metrics",
    ])?;
    let metrics = String::from_utf8_lossy(&metrics_output.stdout).into_owned();
    let mismatch_metric = lines_with(&metrics, &["ztunnel_source_address_mismatches_total{"]);
    let misattributed = lines_with(
        &metrics,
        &[
            "source_workload=\"neighbor\"",
            &format!("source_principal=\"{CLIENT_ID}\""),
        ],
    );
    println!(
        "node 1 access records from {neighbor_ip} after the address was added: {outbound_records:#?}"
    );
    println!("node 2 refusals: {refusals:#?}");
    println!("node 2 mismatch metric: {mismatch_metric:#?}");
    println!("node 2 metric lines naming neighbor with client's principal: {misattributed:#?}");
    let nginx_clients = nginx.clients_after(2);
    println!("nginx clients: {nginx_clients:?}");

    assert!(
        own.status.success() && own.stdout == PAGE.as_bytes(),
        "the client reaches web from its own address"
    );
    assert!(
        neighbour_own.status.success() && neighbour_own.stdout == PAGE.as_bytes(),
        "the neighbour reaches web from its own address"
    );
    assert!(
        spoofed.stdout != PAGE.as_bytes(),
        "the connection from the borrowed address got the page"
    );
    assert_eq!(
        nginx_clients,
        vec![client.ip.to_string(), neighbor_ip.clone()],
        "web saw only the two honest connections, each from its own pod's address"
    );
    assert!(
        !outbound_records.is_empty()
            && outbound_records
                .iter()
                .all(|line| line.contains(CLIENT_ID) && !line.contains(NEIGHBOR_ID)),
        "node 1 sent the connection from {neighbor_ip} under the client's identity"
    );
    assert!(
        refusals.iter().any(|line| line.contains(CLIENT_ID)
            && line.contains(NEIGHBOR_ID)
            && line.contains("status=401")),
        "node 2 refused the stream with 401, naming both identities"
    );
    assert!(
        mismatch_metric.iter().any(|line| line
            .contains(&format!("source_principal=\"{CLIENT_ID}\""))
            && line.contains(&format!("claimed_principal=\"{NEIGHBOR_ID}\""))
            && line.ends_with(" 1")),
        "node 2 counted one source address mismatch"
    );
    assert!(
        misattributed.is_empty(),
        "node 2's metrics attribute the client's connection to the neighbour"
    );
    Ok(())
}
