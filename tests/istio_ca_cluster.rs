//! Two nodes whose ztunnels get every workload certificate from Istio's CA (the test CA
//! service on the underlay, no `--ca-dir`): cross-node traffic flows, each node asked the CA
//! for its own pods' identities with ztunnel's impersonation metadata, and the handshakes
//! carried the CA's chain.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use ztunnel_e2e::{
    apps::listening,
    ca_service::NetnsCaService,
    cluster::Cluster,
    four_pods::{FourPods, MESH},
    wait::wait_until,
};

const CA_ADDRESS: &str = "198.18.0.250:15012";
const ECHO_ADDRESS: &str = "198.18.2.3:8080";

const ONE_SHOT_CLIENT: &str = r#"
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    s.sendall(b"through-the-mesh\n")
    data = s.recv(64)
    print("echoed " + data.decode().strip() if data else "refused eof", flush=True)
except OSError as error:
    print("refused", type(error).__name__, flush=True)
"#;

/// Two nodes whose ztunnels use the test CA on the underlay, and the four pods.
fn setup(test: &str) -> anyhow::Result<(NetnsCaService, FourPods)> {
    let mut cluster = Cluster::new(test, 2, MESH)?;
    let ca_dir = cluster.node(1).ca_dir.clone();
    let root = Arc::new(ztunnel::identity::ca_dir::load(&ca_dir)?);
    let root_cert = ca_dir.join("root-cert.pem").display().to_string();
    let underlay = cluster.underlay_netns().to_owned();
    ztunnel_e2e::env::checked(std::process::Command::new("ip").args([
        "-n",
        &underlay,
        "addr",
        "add",
        "198.18.0.250/24",
        "dev",
        "br0",
    ]))?;
    let ca = NetnsCaService::start(
        &underlay,
        CA_ADDRESS.parse::<SocketAddr>()?,
        root,
        Duration::from_secs(3600),
    )?;
    let flags = ["--ca-address", CA_ADDRESS, "--ca-root-cert", &root_cert];
    cluster.node_mut(1).start_ztunnel(&flags)?;
    cluster.node_mut(2).start_ztunnel(&flags)?;
    let pods = FourPods::in_cluster(cluster)?;
    println!(
        "set up: test Istio CA on {} in the underlay; both ztunnels use it",
        ca.address()
    );
    Ok((ca, pods))
}

#[test]
fn both_nodes_get_their_pods_certificates_from_istios_ca() -> anyhow::Result<()> {
    let (ca, pods) = setup("istio_ca_cluster")?;
    let cluster = &pods.cluster;

    let echo_binary = env!("CARGO_BIN_EXE_soak");
    let _server =
        cluster.spawn_in_pod(&pods.server2, "echo", &[echo_binary, "serve", ECHO_ADDRESS])?;
    wait_until("the echo server to listen", Duration::from_secs(10), || {
        listening(pods.server2.netns(), ECHO_ADDRESS).then_some(())
    })?;
    // A pod's certificate is asked for on its first connection; the first may wait for it.
    let answer = wait_until("an echo through the mesh", Duration::from_secs(30), || {
        let output = cluster
            .run_in_pod(
                &pods.client1,
                &["python3", "-c", ONE_SHOT_CLIENT, "198.18.2.3", "8080"],
            )
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        text.starts_with("echoed").then_some(text)
    });
    let requests = ca.requests();
    let logs = [cluster.node(1).ztunnel_log(), cluster.node(2).ztunnel_log()];
    let in_force: Vec<Vec<&str>> = logs
        .iter()
        .map(|log| {
            log.lines()
                .filter(|line| line.contains("from Istio's CA in force"))
                .collect()
        })
        .collect();
    println!("observed: {answer:?}; CA requests {requests:#?}; node logs {in_force:#?}");

    let answer = answer?;
    assert_eq!(answer, "echoed through-the-mesh");
    for identity in ["client1", "server2"] {
        let spiffe = format!("spiffe://cluster.local/ns/default/sa/{identity}");
        assert!(
            requests
                .iter()
                .any(|request| request.impersonated.as_deref() == Some(&spiffe)
                    && request.outcome.is_ok()),
            "no successful request impersonating {spiffe}"
        );
    }
    assert!(
        in_force[0]
            .iter()
            .any(|line| line.contains("sa/client1") && line.contains("chain_length=2")),
        "node 1 has client1's CA certificate with its intermediate"
    );
    assert!(
        in_force[1]
            .iter()
            .any(|line| line.contains("sa/server2") && line.contains("chain_length=2")),
        "node 2 has server2's CA certificate with its intermediate"
    );
    Ok(())
}

/// `/healthz/ready` of node `index`: the status line's code and the body.
fn readiness(pods: &FourPods, index: u8) -> Option<String> {
    let output = pods
        .cluster
        .node(index)
        .run(&[
            "curl",
            "-sS",
            "--max-time",
            "2",
            "-w",
            " %{http_code}",
            "http://127.0.0.1:15021/healthz/ready",
        ])
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[test]
fn a_restarted_node_is_ready_only_once_its_pods_have_certificates() -> anyhow::Result<()> {
    let (ca, mut pods) = setup("istio_ca_ready")?;
    let root_cert = pods.cluster.node(1).ca_dir.join("root-cert.pem");
    let root_cert = root_cert.display().to_string();
    ca.set_failing(true);
    pods.cluster.node_mut(2).stop_ztunnel()?;
    pods.cluster.node_mut(2).start_ztunnel_without_waiting(&[
        "--ca-address",
        CA_ADDRESS,
        "--ca-root-cert",
        &root_cert,
    ])?;
    let while_failing = wait_until(
        "node 2's readiness to answer while the CA fails",
        Duration::from_secs(30),
        || readiness(&pods, 2).filter(|answer| answer.contains("Istio's CA")),
    );
    // Readiness can answer before the node's first request has reached the CA: wait for it.
    let refused_requests = || {
        ca.requests()
            .iter()
            .filter(|request| request.outcome.is_err())
            .count()
    };
    let refused = wait_until(
        "the restarted node to ask the failing CA",
        Duration::from_secs(30),
        || Some(refused_requests()).filter(|refused| *refused > 0),
    )
    .unwrap_or(0);
    ca.set_failing(false);
    let after = wait_until(
        "node 2 to be ready once the CA answers",
        Duration::from_secs(30),
        || readiness(&pods, 2).filter(|answer| answer.ends_with(" 200")),
    );
    println!(
        "observed: while the CA failed: {while_failing:?} ({refused} refused requests); after: {after:?}"
    );
    let while_failing = while_failing?;
    assert!(while_failing.ends_with(" 503"), "{while_failing}");
    assert!(refused > 0, "the restarted node asked the CA");
    after?;
    Ok(())
}
