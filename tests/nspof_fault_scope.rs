//! No single point of failure (1): losing one node's ztunnel is scoped to that node. Node 1's
//! ztunnel is SIGKILLed under steady traffic (a request every 50 ms on each path):
//!
//! - node 2's own traffic carries on untouched (every request succeeds);
//! - node 1's pods are fail-closed: their new connections are refused by the connect hook and
//!   nothing of theirs crosses the underlay (tcpdump sees no TCP but HBONE, and none of their
//!   bytes);
//! - requests from node 2 to node 1's pods fail cleanly: closed or refused, never left hanging
//!   until the client's own deadline;
//! - with the node switched to fail-open (`ztunnel set-fail-mode open`), node 1's pods reach
//!   their destinations directly, in plaintext, as the capture shows.

use std::time::SystemTime;

use ztunnel_e2e::{
    apps::UnderlayCapture,
    four_pods::FourPods,
    traffic::{EchoServer, Outcome, ProbeReport, ProbeSpec, Prober},
};

const ECHO_PORT: u16 = 7000;
/// Rounds of each probe around the crash (50 ms apart: 4 s).
const CRASH_ROUNDS: u32 = 80;
/// Successful rounds on every path before the crash.
const WARM_ROUNDS: usize = 10;
/// Rounds of the fail-open phase.
const OPEN_ROUNDS: u32 = 40;

fn setup() -> anyhow::Result<FourPods> {
    FourPods::start("nspof_fault_scope")
}

fn after(report: &ProbeReport, instant: SystemTime) -> Vec<Outcome> {
    report
        .records
        .iter()
        .filter(|record| record.at >= instant)
        .map(|record| record.outcome)
        .collect()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[test]
fn a_crashed_ztunnel_fails_closed_on_its_own_node_only() -> anyhow::Result<()> {
    let mut mesh = setup()?;
    let echo1 = EchoServer::start(mesh.server1.netns(), (mesh.server1.ip, ECHO_PORT).into())?;
    let echo2 = EchoServer::start(mesh.server2.netns(), (mesh.server2.ip, ECHO_PORT).into())?;
    let cluster = &mesh.cluster;

    // Phase 1: all paths busy, then node 1's ztunnel dies.
    let capture = UnderlayCapture::start(cluster)?;
    let spec = |echo: &EchoServer| ProbeSpec::connections(echo.address(), CRASH_ROUNDS);
    let node2_internal = Prober::start(cluster, &mesh.client2, "node2-internal", spec(&echo2))?;
    let node1_out = Prober::start(cluster, &mesh.client1, "node1-to-node2", spec(&echo2))?;
    let node2_in = Prober::start(cluster, &mesh.client2, "node2-to-node1", spec(&echo1))?;
    for probe in [&node2_internal, &node1_out, &node2_in] {
        probe.wait_ok(WARM_ROUNDS)?;
    }
    mesh.cluster.node_mut(1).kill_ztunnel()?;
    let killed = SystemTime::now();
    let cluster = &mesh.cluster;
    println!("node 1's ztunnel SIGKILLed");
    let node2_internal = node2_internal.finish()?;
    let node1_out = node1_out.finish()?;
    let node2_in = node2_in.finish()?;
    let pcap_path = capture.pcap.clone();
    let pcap = capture.finish()?;
    let not_hbone = UnderlayCapture::read(&pcap_path, "tcp and not port 15008")?;
    let all_tcp = UnderlayCapture::read(&pcap_path, "tcp")?;
    let counters = cluster
        .node(1)
        .ztunnel_cli(&["inspect", "stats", "--json"])?;

    let out_after = after(&node1_out, killed);
    let in_after = after(&node2_in, killed);
    let in_hung = in_after
        .iter()
        .filter(|outcome| **outcome == Outcome::Timeout)
        .count();
    for report in [&node2_internal, &node1_out, &node2_in] {
        println!("{}", report.figures());
    }
    println!(
        "figures: fault-scope after-kill node1-to-node2 sent={} refused={} node2-to-node1 sent={} failed_cleanly={} hung={}",
        out_after.len(),
        out_after.iter().filter(|o| **o == Outcome::Refused).count(),
        in_after.len(),
        in_after
            .iter()
            .filter(|o| **o != Outcome::Ok && **o != Outcome::Timeout)
            .count(),
        in_hung
    );
    println!(
        "failures: node1-to-node2 {:?}; node2-to-node1 {:?}",
        node1_out.failure_summary(),
        node2_in.failure_summary()
    );
    println!(
        "figures: fault-scope underlay tcp_packets={} not_hbone_packets={} plaintext_of_node1={}",
        all_tcp.len(),
        not_hbone.len(),
        contains(&pcap, "node1-to-node2")
    );
    println!("node 1 stats while down: {}", counters.trim());

    assert!(
        node2_internal.done,
        "the node-2-internal probe stopped early"
    );
    assert_eq!(
        node2_internal.ok(),
        node2_internal.sent(),
        "node 2's own traffic was disturbed by node 1's crash: {:?}",
        node2_internal.failures()
    );
    assert!(
        !out_after.is_empty(),
        "no node 1 request started after the kill: the test would prove nothing"
    );
    assert!(
        out_after.iter().all(|outcome| *outcome == Outcome::Refused),
        "node 1's new connections after the crash were not all refused: {out_after:?}"
    );
    assert!(!all_tcp.is_empty(), "the capture saw nothing at all");
    assert!(
        not_hbone.is_empty(),
        "TCP other than HBONE crossed the underlay while node 1 was fail-closed: {not_hbone:?}"
    );
    assert!(
        !contains(&pcap, "node1-to-node2") && !contains(&pcap, "node2-to-node1"),
        "probe bytes crossed the underlay in plaintext"
    );
    assert!(
        !in_after.is_empty() && in_after.iter().all(|outcome| *outcome != Outcome::Ok),
        "requests from node 2 to node 1's pods succeeded without node 1's ztunnel: {in_after:?}"
    );
    assert_eq!(
        in_hung, 0,
        "requests from node 2 to node 1's pods hung until the client's deadline"
    );
    assert!(node2_in.done, "the node2-to-node1 probe stopped early");

    // Phase 2: the same node set fail-open: node 1's pods go direct, node 2 is still untouched.
    let mode = cluster.node(1).ztunnel_cli(&["set-fail-mode", "open"])?;
    println!("{}", mode.trim());
    let capture = UnderlayCapture::start(cluster)?;
    let open_spec = |echo: &EchoServer| ProbeSpec::connections(echo.address(), OPEN_ROUNDS);
    let node1_open = Prober::start(cluster, &mesh.client1, "node1-open", open_spec(&echo2))?;
    let node2_internal = Prober::start(cluster, &mesh.client2, "node2-internal-open", {
        open_spec(&echo2)
    })?;
    let node1_open = node1_open.finish()?;
    let node2_internal = node2_internal.finish()?;
    let pcap_path = capture.pcap.clone();
    let pcap = capture.finish()?;
    let direct = UnderlayCapture::read(
        &pcap_path,
        &format!(
            "tcp and src host {} and dst host {} and dst port {ECHO_PORT}",
            mesh.client1.ip, mesh.server2.ip
        ),
    )?;
    println!("{}", node1_open.figures());
    println!("{}", node2_internal.figures());
    println!(
        "figures: fault-scope fail-open direct_packets={} plaintext_seen={}",
        direct.len(),
        contains(&pcap, "node1-open")
    );
    assert_eq!(
        node1_open.ok(),
        node1_open.sent(),
        "fail-open: node 1's pods did not reach their destination: {:?}",
        node1_open.failures()
    );
    assert!(node1_open.done, "the fail-open probe stopped early");
    assert!(
        !direct.is_empty() && contains(&pcap, "node1-open"),
        "fail-open traffic did not go directly (in plaintext) to the destination"
    );
    assert_eq!(
        node2_internal.ok(),
        node2_internal.sent(),
        "node 2's own traffic failed: {:?}",
        node2_internal.failures()
    );
    let _ = (&mesh.server1, echo1.accepted());
    Ok(())
}
