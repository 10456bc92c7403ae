//! IPv6 end to end on a dual-stack cluster: a pod on node 1 connects to the IPv6 address of a
//! pod on node 2. connect6 captures it, node 1 tunnels it in HBONE to `[pod v6]:15008` over the
//! IPv6 underlay, node 2's TC program recognises the IPv6 workload, and the server sees the
//! client pod's own IPv6 address.

use std::net::SocketAddr;

use ztunnel_e2e::{
    apps::{UnderlayCapture, listening},
    cluster::{Cluster, ClusterNode, ClusterPod},
    server::HttpServer,
    wait::{DEFAULT_TIMEOUT, wait_until},
};

/// host-local hands out ::2 (after the gateway ::1) and .2 first on each node.
const MESH: &str = r#"
workloads:
- {uid: t//client, name: client, namespace: default, serviceAccount: client, workloadIps: ["198.18.1.2", "2001:db8:1::2"], protocol: HBONE, node: node-1}
- {uid: t//server, name: server, namespace: default, serviceAccount: server, workloadIps: ["198.18.2.2", "2001:db8:2::2"], protocol: HBONE, node: node-2}
"#;

/// A marker that must never cross the underlay in plaintext.
const CANARY: &str = "canary-v6-51c0d2";
const GREETING: &str = "hello over ipv6 hbone";

/// The `inspect stats` row of `pod` on `node`.
fn stats(node: &ClusterNode, pod: &ClusterPod) -> anyhow::Result<serde_json::Value> {
    let text = node.ztunnel_cli(&["inspect", "stats", "--json"])?;
    let rows: serde_json::Value = serde_json::from_str(text.trim())?;
    let wanted = format!("{}/{}", pod.namespace, pod.name);
    rows.as_array()
        .into_iter()
        .flatten()
        .find(|row| row["name"].as_str() == Some(wanted.as_str()))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("node {} has no stats row for {wanted}: {text}", node.index))
}

fn counter(row: &serde_json::Value, name: &str) -> u64 {
    row[name].as_u64().unwrap_or(0)
}

#[test]
fn ipv6_pod_to_pod_across_nodes_is_captured_and_tunnelled_in_hbone_over_ipv6() -> anyhow::Result<()>
{
    let mut cluster = Cluster::new_dual_stack("ipv6_hbone", 2, MESH)?;
    cluster.node_mut(1).start_ztunnel(&[])?;
    cluster.node_mut(2).start_ztunnel(&[])?;
    let client = cluster.pod(1, "default", "client")?;
    let server_pod = cluster.pod(2, "default", "server")?;
    let (Some(client_v6), Some(server_v6)) = (client.ipv6, server_pod.ipv6) else {
        anyhow::bail!("the dual-stack pods have no IPv6 addresses");
    };
    anyhow::ensure!(
        client_v6.to_string() == "2001:db8:1::2" && server_v6.to_string() == "2001:db8:2::2",
        "host-local handed out {client_v6} and {server_v6}; the mesh config says 2001:db8:1::2 and 2001:db8:2::2"
    );
    let workloads = cluster
        .node(2)
        .ztunnel_cli(&["inspect", "workloads", "--json"])?;
    println!("node 2 workloads: {workloads}");
    anyhow::ensure!(
        workloads.contains(&server_v6.to_string()),
        "the CNI plugin did not enroll the server's IPv6 address"
    );
    let server = HttpServer::start(
        server_pod.netns(),
        SocketAddr::new(server_v6.into(), 8080),
        GREETING,
    )?;
    let client_before = stats(cluster.node(1), &client)?;
    let server_before = stats(cluster.node(2), &server_pod)?;

    let capture = UnderlayCapture::start(&cluster)?;
    let url = format!("http://[{server_v6}]:8080/");
    let header = format!("X-Canary: {CANARY}");
    let output = cluster.run_in_pod(
        &client,
        &[
            "curl",
            "-6",
            "-g",
            "-sS",
            "--max-time",
            "10",
            "-H",
            &header,
            "-w",
            "\ntime_total=%{time_total} time_connect=%{time_connect}",
            &url,
        ],
    )?;
    // A port nobody listens on: the refusal must come back through the tunnel at once (the
    // server pod's RST to ztunnel's transparent upstream socket stays in the pod), not leak onto
    // the underlay and leave the client waiting for a timeout.
    let closed_url = format!("http://[{server_v6}]:8081/");
    let closed_started = std::time::Instant::now();
    let closed = cluster.run_in_pod(
        &client,
        &["curl", "-6", "-g", "-sS", "--max-time", "10", &closed_url],
    )?;
    let closed_elapsed = closed_started.elapsed();
    let pcap_path = capture.pcap.clone();
    let pcap = capture.finish()?;
    let iperf3_bits = iperf3_over_ipv6(&cluster, &client, &server_pod)?;
    let client_after = stats(cluster.node(1), &client)?;
    let server_after = stats(cluster.node(2), &server_pod)?;
    let hbone_v6 = UnderlayCapture::read(
        &pcap_path,
        &format!("ip6 and tcp and dst host {server_v6} and dst port 15008"),
    )?;
    let all_tcp = UnderlayCapture::read(&pcap_path, "tcp")?;
    let not_hbone = UnderlayCapture::read(&pcap_path, "tcp and not port 15008")?;
    let ipv4_tcp = UnderlayCapture::read(&pcap_path, "ip and tcp")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, timing) = stdout.rsplit_once('\n').unwrap_or((&stdout, ""));
    let access: Vec<String> = cluster
        .node(1)
        .ztunnel_log()
        .lines()
        .filter(|line| line.contains("ztunnel::access"))
        .map(str::to_owned)
        .collect();
    let outbound_delta = counter(&client_after, "outbound_redirected")
        - counter(&client_before, "outbound_redirected");
    let inbound_passed_delta =
        counter(&server_after, "inbound_passed") - counter(&server_before, "inbound_passed");
    println!(
        "curl {url}: {}, body {body:?}, stderr {:?}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    println!("server saw peers {:?}", server.peers());
    println!(
        "underlay: {} TCP packets, {} IPv6 to [{server_v6}]:15008, {} not on 15008, {} over IPv4; first: {:?}",
        all_tcp.len(),
        hbone_v6.len(),
        not_hbone.len(),
        ipv4_tcp.len(),
        hbone_v6.first()
    );
    println!(
        "curl {closed_url} (closed port): {} after {closed_elapsed:?}, stderr {:?}",
        closed.status,
        String::from_utf8_lossy(&closed.stderr).trim()
    );
    println!("client stats {client_before} -> {client_after}");
    println!("server stats {server_before} -> {server_after}");
    println!("node 1 access log: {access:#?}");
    println!(
        "figures: ipv6_hbone {timing} closed_port_refusal_ms={} iperf3_mbit_per_s={:.1} underlay_hbone_v6_packets={} client_outbound_redirected_delta={outbound_delta} server_inbound_passed_delta={inbound_passed_delta}",
        closed_elapsed.as_millis(),
        iperf3_bits / 1e6,
        hbone_v6.len()
    );

    assert!(output.status.success(), "curl over IPv6 failed");
    assert!(
        body.starts_with(&format!("{GREETING} peer=[{client_v6}]:")),
        "the server did not answer, or did not see the client pod's IPv6 address: {body:?}"
    );
    assert!(iperf3_bits > 0.0, "iperf3 over IPv6 moved no data");
    assert!(
        !closed.status.success() && closed.status.code() != Some(28),
        "a closed port on the server pod is refused through the tunnel, not left to time out (curl exit 28)"
    );
    assert!(
        outbound_delta >= 3,
        "connect6 did not redirect the client's connections (two curls and iperf3)"
    );
    assert!(
        inbound_passed_delta >= 1,
        "node 2's TC program did not see the HBONE SYN to the server's IPv6 workload"
    );
    assert!(
        !hbone_v6.is_empty(),
        "no IPv6 TCP to [{server_v6}]:15008 crossed the underlay"
    );
    assert!(
        not_hbone.is_empty(),
        "TCP other than HBONE crossed the underlay: {not_hbone:?}"
    );
    assert!(
        ipv4_tcp.is_empty(),
        "the IPv6 connection was carried over IPv4: {ipv4_tcp:?}"
    );
    let window = |needle: &[u8]| pcap.windows(needle.len()).any(|bytes| bytes == needle);
    assert!(
        !window(CANARY.as_bytes()),
        "the request header crossed the underlay in plaintext"
    );
    assert!(
        !window(GREETING.as_bytes()),
        "the response crossed the underlay in plaintext"
    );
    assert!(
        access
            .iter()
            .any(|line| line.contains(&server_v6.to_string())
                && line.contains("spiffe://cluster.local/ns/default/sa/server")),
        "node 1's access log names the IPv6 destination and the server's identity"
    );
    Ok(())
}

/// One second of iperf3 from `client` to the server pod's IPv6 address; bits/s received.
fn iperf3_over_ipv6(
    cluster: &Cluster,
    client: &ClusterPod,
    server: &ClusterPod,
) -> anyhow::Result<f64> {
    let Some(address) = server.ipv6 else {
        anyhow::bail!("the server pod has no IPv6 address");
    };
    let bind = address.to_string();
    let _server = cluster.spawn_in_pod(
        server,
        "iperf3-server-v6",
        &["iperf3", "-s", "-B", &bind, "-1"],
    )?;
    let listen = format!("[{bind}]:5201");
    wait_until(
        &format!("iperf3 to listen on {listen}"),
        DEFAULT_TIMEOUT,
        || listening(server.netns(), &listen).then_some(()),
    )?;
    let output = cluster.run_in_pod(client, &["iperf3", "-6", "-c", &bind, "-t", "1", "-J"])?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    let bits = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    println!(
        "iperf3 -6 {} -> [{bind}]:5201: {}, {:.1} Mbit/s received{}",
        client.name,
        output.status,
        bits / 1e6,
        if output.status.success() {
            String::new()
        } else {
            format!(", stderr {:?}", String::from_utf8_lossy(&output.stderr))
        }
    );
    Ok(bits)
}
