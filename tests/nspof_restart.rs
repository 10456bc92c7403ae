//! No single point of failure (2): a crashed node ztunnel that starts again picks up where it
//! left off. Under steady traffic (a request every 50 ms out of node 1 and into it), node 1's
//! ztunnel is SIGKILLed and started again:
//!
//! - capture was never detached while it was down: the pinned programs kept counting (the
//!   per-pod refusal counter moves) and are still on their hooks;
//! - the new daemon adopts the pinned state: exactly one program per hook afterwards;
//! - it re-opens every enrolled pod's listeners, and the first request after it reports ready
//!   succeeds (the time from readiness to that success is printed);
//! - once the pods are deleted, no pin of theirs is left.

use std::time::{Duration, SystemTime};

use ztunnel::ebpf::loader::CGROUP_PROGRAMS;
use ztunnel_e2e::{
    apps::listening,
    cluster::{Cluster, log_line_time},
    four_pods::FourPods,
    kernel::{cgroup_programs, tcx_ingress_programs},
    traffic::{EchoServer, ProbeReport, ProbeSpec, Prober},
    wait::{DEFAULT_TIMEOUT, wait_until},
};

const ECHO_PORT: u16 = 7000;
/// Rounds of each probe (50 ms apart: 6 s around the crash and the restart).
const PROBE_ROUNDS: u32 = 120;
/// Successful rounds before the crash, and refused connects counted while down.
const WARM_ROUNDS: usize = 10;
const REFUSED_WHILE_DOWN: u64 = 10;

fn setup() -> anyhow::Result<FourPods> {
    FourPods::start("nspof_restart")
}

/// `outbound_refused` of `pod` in node 1's `inspect stats`.
fn refused(cluster: &Cluster, pod: &str) -> anyhow::Result<u64> {
    let text = cluster
        .node(1)
        .ztunnel_cli(&["inspect", "stats", "--json"])?;
    let rows: serde_json::Value = serde_json::from_str(text.trim())?;
    rows.as_array()
        .into_iter()
        .flatten()
        .find(|row| row["name"] == format!("default/{pod}"))
        .and_then(|row| row["outbound_refused"].as_u64())
        .ok_or_else(|| anyhow::anyhow!("no stats row for {pod}: {text}"))
}

/// The pin directories of pods under node 1's bpffs root.
fn pod_pins(cluster: &Cluster) -> anyhow::Result<Vec<String>> {
    let directory = cluster.node(1).bpffs_root.join("pod-links");
    Ok(std::fs::read_dir(&directory)?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect())
}

/// Milliseconds from `ready` until the first request that started after it succeeded.
fn first_ok_after(report: &ProbeReport, ready: SystemTime) -> Option<f64> {
    let record = report.first_ok_after(ready)?;
    let done = record.at + record.elapsed;
    Some(
        done.duration_since(ready)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64()
            * 1000.0,
    )
}

#[test]
fn a_restarted_ztunnel_adopts_capture_and_serves_at_once() -> anyhow::Result<()> {
    let mut mesh = setup()?;
    let echo1 = EchoServer::start(mesh.server1.netns(), (mesh.server1.ip, ECHO_PORT).into())?;
    let echo2 = EchoServer::start(mesh.server2.netns(), (mesh.server2.ip, ECHO_PORT).into())?;
    let cluster = &mesh.cluster;
    let outbound = Prober::start(
        cluster,
        &mesh.client1,
        "node1-out",
        ProbeSpec::connections(echo2.address(), PROBE_ROUNDS),
    )?;
    let inbound = Prober::start(
        cluster,
        &mesh.client2,
        "node1-in",
        ProbeSpec::connections(echo1.address(), PROBE_ROUNDS),
    )?;
    outbound.wait_ok(WARM_ROUNDS)?;
    inbound.wait_ok(WARM_ROUNDS)?;

    mesh.cluster.node_mut(1).kill_ztunnel()?;
    let cluster = &mesh.cluster;
    let refused_at_kill = refused(cluster, "client1")?;
    let refused_while_down = wait_until(
        "node 1's pinned connect hook to refuse connections while ztunnel is down",
        DEFAULT_TIMEOUT,
        || {
            let now = refused(cluster, "client1").ok()?;
            (now >= refused_at_kill + REFUSED_WHILE_DOWN).then_some(now)
        },
    )?;
    let tc_while_down = tcx_ingress_programs(mesh.client1.netns(), "eth0")?;
    let cgroup_while_down = cgroup_programs(&cluster.node(1).cgroup)?;

    let log_offset = cluster.node(1).ztunnel_log().len();
    mesh.cluster.node_mut(1).start_ztunnel(&[])?;
    let cluster = &mesh.cluster;
    let log = cluster.node(1).ztunnel_log();
    let ready_line = log[log_offset..]
        .lines()
        .find(|line| line.contains("ztunnel daemon ready"))
        .unwrap_or_default()
        .to_owned();
    let ready = log_line_time(&ready_line)
        .ok_or_else(|| anyhow::anyhow!("no time in the ready line {ready_line:?}"))?;
    let adopted = log[log_offset..]
        .lines()
        .filter(|line| line.contains("outcome=Adopted") || line.contains("tc=Adopted"))
        .count();
    let pods = [&mesh.client1, &mesh.server1];
    let mut listeners = Vec::new();
    for pod in pods {
        for address in [
            "127.0.0.1:15001".to_owned(),
            "0.0.0.0:15006".to_owned(),
            format!("{}:15008", pod.ip),
        ] {
            listeners.push((pod.name.clone(), address.clone(), {
                listening(pod.netns(), &address)
            }));
        }
    }
    let mut cgroup_hooks = cgroup_programs(&cluster.node(1).cgroup)?;
    cgroup_hooks.sort();
    let tc_hooks: Vec<Vec<String>> = pods
        .iter()
        .map(|pod| tcx_ingress_programs(pod.netns(), "eth0"))
        .collect::<anyhow::Result<_>>()?;

    let outbound = outbound.finish()?;
    let inbound = inbound.finish()?;
    let after_ready = |report: &ProbeReport| -> Vec<String> {
        report
            .records
            .iter()
            .filter(|record| {
                record.at >= ready && record.outcome != ztunnel_e2e::traffic::Outcome::Ok
            })
            .map(|record| {
                format!(
                    "round {}: {} {}",
                    record.round,
                    record.outcome.name(),
                    record.detail
                )
            })
            .collect()
    };
    let outbound_failed_after_ready = after_ready(&outbound);
    let inbound_failed_after_ready = after_ready(&inbound);
    let outbound_first = first_ok_after(&outbound, ready);
    let inbound_first = first_ok_after(&inbound, ready);

    println!("{}\n{}", outbound.figures(), inbound.figures());
    println!(
        "figures: restart refused_while_down={} ready_to_first_ok_ms out={} in={} adopted_hooks={adopted} failed_after_ready out={} in={}",
        refused_while_down - refused_at_kill,
        outbound_first.map_or("none".into(), |ms| format!("{ms:.1}")),
        inbound_first.map_or("none".into(), |ms| format!("{ms:.1}")),
        outbound_failed_after_ready.len(),
        inbound_failed_after_ready.len(),
    );
    println!("while down: TCX ingress of client1 {tc_while_down:?}; cgroup {cgroup_while_down:?}");
    println!(
        "after restart: cgroup {cgroup_hooks:?}; TCX ingress of client1, server1 {tc_hooks:?}"
    );
    println!("listeners after restart: {listeners:?}");
    println!("{ready_line}");

    assert_eq!(
        tc_while_down,
        vec!["tc_ingress".to_owned()],
        "the TC program was detached while ztunnel was down"
    );
    assert_eq!(
        cgroup_while_down.len(),
        CGROUP_PROGRAMS.len(),
        "cgroup programs were detached while ztunnel was down"
    );
    assert_eq!(
        cgroup_hooks,
        vec![
            ("cgroup_getsockopt".to_owned(), "getsockopt".to_owned()),
            ("cgroup_inet4_bind".to_owned(), "bind4".to_owned()),
            ("cgroup_inet4_connect".to_owned(), "connect4".to_owned()),
            (
                "cgroup_inet4_getpeername".to_owned(),
                "getpeername4".to_owned()
            ),
            ("cgroup_inet6_bind".to_owned(), "bind6".to_owned()),
            ("cgroup_inet6_connect".to_owned(), "connect6".to_owned()),
            (
                "cgroup_inet6_getpeername".to_owned(),
                "getpeername6".to_owned()
            ),
            ("cgroup_sock_ops".to_owned(), "sockops_rekey".to_owned()),
        ],
        "not exactly one copy of each cgroup program after the restart"
    );
    for hooks in &tc_hooks {
        assert_eq!(
            hooks,
            &vec!["tc_ingress".to_owned()],
            "not exactly one TC ingress program after the restart"
        );
    }
    assert!(
        listeners.iter().all(|(_, _, open)| *open),
        "a listener was not re-opened: {listeners:?}"
    );
    assert!(
        outbound_first.is_some() && inbound_first.is_some(),
        "no request succeeded after the restart"
    );
    assert!(
        outbound_failed_after_ready.is_empty() && inbound_failed_after_ready.is_empty(),
        "requests failed after the restarted ztunnel said it was ready: {outbound_failed_after_ready:?} {inbound_failed_after_ready:?}"
    );

    // Deleting the pods leaves none of their pins behind.
    let pins_before = pod_pins(cluster)?;
    mesh.client1.delete()?;
    mesh.server1.delete()?;
    let cluster = &mesh.cluster;
    let pins_after = pod_pins(cluster)?;
    let enrolled = cluster
        .node(1)
        .ztunnel_cli(&["inspect", "pods", "--json"])?;
    println!(
        "pod pins before CNI DEL {pins_before:?}, after {pins_after:?}; pods map after: {}",
        enrolled.trim()
    );
    assert_eq!(pins_before.len(), 2, "one pin directory per enrolled pod");
    assert!(
        pins_after.is_empty(),
        "pins left after the pods were deleted: {pins_after:?}"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(enrolled.trim())?,
        serde_json::json!([]),
        "the pods map still lists deleted pods"
    );
    let _ = (&mesh.client2, &mesh.server2);
    Ok(())
}
