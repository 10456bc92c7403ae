//! A policy change reaches open connections: with a connection open from a pod on node 1 to a
//! pod on node 2, a DENY added to the config file (reloaded by both ztunnels) closes that
//! connection, and the next connection is refused. Node 2 (the destination) logs and counts it.

use std::time::Duration;

use ztunnel_e2e::{
    apps::listening,
    four_pods::{FourPods, MESH},
    wait::wait_until,
};

const ECHO_ADDRESS: &str = "198.18.2.3:8080";

const DENY_CLIENT1: &str = r#"
policies:
- name: deny-client1
  namespace: default
  scope: Namespace
  action: Deny
  rules:
  - - - principals: [!Exact cluster.local/ns/default/sa/client1]
"#;

/// Sends a line, prints what came back, then waits (without a timeout) for the connection
/// to end and prints how it ended.
const HOLDING_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
s.sendall(b"before\n")
data = b""
while len(data) < 7:
    chunk = s.recv(64)
    if not chunk:
        break
    data += chunk
print("echoed", data.decode().strip(), flush=True)
s.settimeout(None)
try:
    rest = s.recv(64)
    print("closed", "eof" if not rest else "data", flush=True)
except OSError as error:
    print("closed", type(error).__name__, flush=True)
"#;

/// One exchange with a deadline: prints `echoed <text>` or `refused <why>`.
const ONE_SHOT_CLIENT: &str = r#"
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    s.sendall(b"after\n")
    data = s.recv(64)
    print("echoed " + data.decode().strip() if data else "refused eof", flush=True)
except OSError as error:
    print("refused", type(error).__name__, flush=True)
"#;

#[test]
fn a_deny_added_to_the_config_closes_the_open_connection_and_refuses_new_ones() -> anyhow::Result<()>
{
    let pods = FourPods::start("policy_change_closes")?;
    let cluster = &pods.cluster;
    let echo_binary = env!("CARGO_BIN_EXE_soak");
    let _server =
        cluster.spawn_in_pod(&pods.server2, "echo", &[echo_binary, "serve", ECHO_ADDRESS])?;
    wait_until("the echo server to listen", Duration::from_secs(10), || {
        listening(pods.server2.netns(), ECHO_ADDRESS).then_some(())
    })?;
    let client = cluster.spawn_in_pod(
        &pods.client1,
        "holding-client",
        &["python3", "-c", HOLDING_CLIENT, "198.18.2.3", "8080"],
    )?;
    wait_until(
        "the holding client's first echo",
        Duration::from_secs(20),
        || client.log_text().contains("echoed").then_some(()),
    )?;
    println!(
        "set up: client1 (node 1) holds a connection to the echo server on server2 (node 2): {:?}",
        client.log_text().trim()
    );

    // Both ztunnels poll the same file; rename so neither reads a half-written one.
    let staged = cluster.mesh_config.with_extension("next");
    std::fs::write(&staged, format!("{MESH}{DENY_CLIENT1}"))?;
    std::fs::rename(&staged, &cluster.mesh_config)?;
    println!(
        "applied: deny-client1 added to {}",
        cluster.mesh_config.display()
    );

    let closed = wait_until(
        "the open connection to be closed after the DENY",
        Duration::from_secs(30),
        || {
            let log = client.log_text();
            log.lines()
                .find(|line| line.starts_with("closed"))
                .map(str::to_owned)
        },
    );
    let next = cluster.run_in_pod(
        &pods.client1,
        &["python3", "-c", ONE_SHOT_CLIENT, "198.18.2.3", "8080"],
    )?;
    let next = String::from_utf8_lossy(&next.stdout).trim().to_owned();
    let node2_log = cluster.node(2).ztunnel_log();
    let closure_logs: Vec<&str> = node2_log
        .lines()
        .filter(|line| line.contains("no longer allows it"))
        .collect();
    let metrics = cluster.node(2).run(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "http://127.0.0.1:15020/metrics",
    ])?;
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    let counted: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("ztunnel_connections_closed_by_policy_total"))
        .collect();
    println!(
        "observed: open connection {closed:?}; next connection {next:?}; node 2 closure logs {closure_logs:#?}; counter {counted:?}"
    );

    let closed = closed?;
    assert!(closed.starts_with("closed"), "{closed}");
    assert!(
        next.starts_with("refused"),
        "the next connection got through: {next}"
    );
    assert_eq!(closure_logs.len(), 1, "node 2 logs the closure once");
    assert_eq!(
        counted,
        vec!["ztunnel_connections_closed_by_policy_total{reporter=\"destination\"} 1"]
    );
    Ok(())
}
