//! No single point of failure (3): upgrading a node's ztunnel loses nothing. A second ztunnel is
//! started on node 1 beside the running one (`--takeover`, as the DaemonSet's surge pod is), then
//! the old one is told to go (SIGTERM, as the rolling update does). Throughout, a request every
//! 50 ms on every path through node 1 — outbound to another node, inbound HBONE from another
//! node, node-internal, and plaintext from a pod outside the mesh — must succeed, and
//! connections opened before the rollout that finish within the drain window must complete
//! without a reset.

use std::time::{Duration, Instant, SystemTime};

use ztunnel_e2e::{
    cluster::{Cluster, ClusterPod},
    traffic::{EchoServer, Outcome, ProbeReport, ProbeSpec, Prober},
    wait::{DEFAULT_TIMEOUT, wait_until},
};

/// host-local hands out .2, .3, .4 in creation order on each node; `setup` checks it. surge1 is
/// created while both daemons run, late1 after the successor took over (checked when made).
const MESH: &str = r#"
workloads:
- {uid: t//client1, name: client1, namespace: default, serviceAccount: client1, workloadIps: ["198.18.1.2"], protocol: HBONE, node: node-1}
- {uid: t//server1, name: server1, namespace: default, serviceAccount: server1, workloadIps: ["198.18.1.3"], protocol: HBONE, node: node-1}
- {uid: t//client2, name: client2, namespace: default, serviceAccount: client2, workloadIps: ["198.18.2.2"], protocol: HBONE, node: node-2}
- {uid: t//server2, name: server2, namespace: default, serviceAccount: server2, workloadIps: ["198.18.2.3"], protocol: HBONE, node: node-2}
- {uid: t//surge1, name: surge1, namespace: default, serviceAccount: surge1, workloadIps: ["198.18.1.4"], protocol: HBONE, node: node-1}
- {uid: t//late1, name: late1, namespace: default, serviceAccount: late1, workloadIps: ["198.18.1.5"], protocol: HBONE, node: node-1}
- {uid: t//legacy, name: legacy, namespace: default, serviceAccount: legacy, workloadIps: ["198.18.2.4"], protocol: TCP, node: node-2}
"#;

const ECHO_PORT: u16 = 7000;
/// New-connection rounds per path (50 ms apart: 10 s, the whole rollout).
const PROBE_ROUNDS: u32 = 200;
/// Rounds of each long-lived connection (8 s: open before the rollout, ending during the old
/// daemon's drain).
const SESSION_ROUNDS: u32 = 160;
/// Successful rounds on every path before the rollout starts, and again while both run.
const WARM_ROUNDS: usize = 10;
/// Rounds from each pod enrolled during or after the upgrade.
const NEW_POD_ROUNDS: u32 = 10;
/// How long the old daemon is stopped just before its SIGTERM (six probe rounds).
const STALL: Duration = Duration::from_millis(300);

struct Mesh {
    client1: ClusterPod,
    server1: ClusterPod,
    client2: ClusterPod,
    server2: ClusterPod,
    legacy: ClusterPod,
    cluster: Cluster,
}

fn setup() -> anyhow::Result<Mesh> {
    let mut cluster = Cluster::new("nspof_upgrade", 2, MESH)?;
    cluster.node_mut(1).start_ztunnel(&[])?;
    cluster.node_mut(2).start_ztunnel(&[])?;
    let client1 = cluster.pod(1, "default", "client1")?;
    let server1 = cluster.pod(1, "default", "server1")?;
    let client2 = cluster.pod(2, "default", "client2")?;
    let server2 = cluster.pod(2, "default", "server2")?;
    let legacy = cluster.pod(2, "default", "legacy")?;
    for (pod, expected) in [
        (&client1, "198.18.1.2"),
        (&server1, "198.18.1.3"),
        (&client2, "198.18.2.2"),
        (&server2, "198.18.2.3"),
        (&legacy, "198.18.2.4"),
    ] {
        anyhow::ensure!(
            pod.ip.to_string() == expected,
            "pod {} got {} from host-local, the mesh config says {expected}",
            pod.name,
            pod.ip
        );
    }
    Ok(Mesh {
        client1,
        server1,
        client2,
        server2,
        legacy,
        cluster,
    })
}

#[test]
fn a_rolling_upgrade_of_ztunnel_loses_no_request_and_resets_no_connection() -> anyhow::Result<()> {
    let mut mesh = setup()?;
    let echo1 = EchoServer::start(mesh.server1.netns(), (mesh.server1.ip, ECHO_PORT).into())?;
    let echo2 = EchoServer::start(mesh.server2.netns(), (mesh.server2.ip, ECHO_PORT).into())?;
    let cluster = &mesh.cluster;
    let paths = [
        ("node1-out", &mesh.client1, &echo2),
        ("node1-in-hbone", &mesh.client2, &echo1),
        ("node1-internal", &mesh.client1, &echo1),
        ("node1-in-plaintext", &mesh.legacy, &echo1),
    ];
    let mut probes = Vec::new();
    let mut sessions = Vec::new();
    for (label, from, to) in paths {
        let spec = ProbeSpec::connections(to.address(), PROBE_ROUNDS);
        probes.push(Prober::start(cluster, from, label, spec)?);
        let session = ProbeSpec::session(to.address(), SESSION_ROUNDS);
        sessions.push(Prober::start(
            cluster,
            from,
            &format!("{label}-session"),
            session,
        )?);
    }
    for probe in probes.iter().chain(&sessions) {
        probe.wait_ok(WARM_ROUNDS)?;
    }

    let mut migration = Vec::new();
    for pod in [&mesh.client1, &mesh.server1] {
        let output = std::process::Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", pod.netns()))
            .args(["cat", "/proc/sys/net/ipv4/tcp_migrate_req"])
            .output()?;
        migration.push((
            pod.name.clone(),
            String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        ));
    }
    println!("net.ipv4.tcp_migrate_req in node 1's pods: {migration:?}");
    assert!(
        migration.iter().all(|(_, value)| value == "1"),
        "ztunnel did not turn on request migration in its pods: {migration:?}"
    );

    let surge_started = Instant::now();
    mesh.cluster.node_mut(1).start_successor(&[])?;
    let standing_by = surge_started.elapsed();
    // A pod created while both run: the CNI plugin asks the old daemon, the successor follows
    // the enrolled set; both must serve it before the old one goes.
    let serving_offset = mesh.cluster.node(1).ztunnel_log().len();
    let surge1 = mesh.cluster.pod(1, "default", "surge1")?;
    wait_until("both daemons to serve surge1", DEFAULT_TIMEOUT, || {
        let log = mesh.cluster.node(1).ztunnel_log();
        let serving = log
            .get(serving_offset..)?
            .lines()
            .filter(|line| line.contains("serving pod") && line.contains("pod=surge1"))
            .count();
        (serving >= 2).then_some(())
    })?;
    let overlap: Vec<usize> = probes.iter().map(|probe| probe.report().ok()).collect();
    for (probe, before) in probes.iter().zip(&overlap) {
        probe.wait_ok(before + WARM_ROUNDS)?;
    }
    // The fault: the old daemon stalls (SIGSTOP) for a few rounds just before its SIGTERM, as
    // an overloaded one does, so connections queue on its listeners; closing them must hand
    // those to the successor's (tcp_migrate_req), not reset them. The stall's length is the
    // fault's definition (well under the clients' 2 s deadline), not a synchronisation.
    mesh.cluster.node(1).signal_ztunnel(libc::SIGSTOP)?;
    std::thread::sleep(STALL);
    let sigterm = SystemTime::now();
    let retire_started = Instant::now();
    let old_status = mesh.cluster.node_mut(1).retire_ztunnel()?;
    let old_gone = retire_started.elapsed();
    // A pod created after the takeover: the CNI plugin asks the successor on its socket.
    let late1 = mesh.cluster.pod(1, "default", "late1")?;
    let cluster = &mesh.cluster;
    for (pod, expected) in [(&surge1, "198.18.1.4"), (&late1, "198.18.1.5")] {
        anyhow::ensure!(
            pod.ip.to_string() == expected,
            "pod {} got {} from host-local, the mesh config says {expected}",
            pod.name,
            pod.ip
        );
    }
    let new_pods: Vec<ProbeReport> = [&surge1, &late1]
        .into_iter()
        .map(|pod| {
            let spec = ProbeSpec::connections(echo2.address(), NEW_POD_ROUNDS);
            Prober::start(cluster, pod, &format!("{}-out", pod.name), spec)?.finish()
        })
        .collect::<anyhow::Result<_>>()?;
    let log = cluster.node(1).ztunnel_log();
    let took_over = log
        .lines()
        .find(|line| line.contains("taking over"))
        .unwrap_or_default()
        .to_owned();
    let drained = log
        .lines()
        .rfind(|line| line.contains("drain finished"))
        .unwrap_or_default()
        .to_owned();

    let probes: Vec<ProbeReport> = probes
        .into_iter()
        .map(Prober::finish)
        .collect::<anyhow::Result<_>>()?;
    let sessions: Vec<ProbeReport> = sessions
        .into_iter()
        .map(Prober::finish)
        .collect::<anyhow::Result<_>>()?;
    let spanning = sessions
        .iter()
        .filter(|session| session.spans(sigterm))
        .count();
    // Requests that waited out the stall: queued on (or held by) the stopped old daemon.
    let stalled: usize = probes
        .iter()
        .chain(&sessions)
        .flat_map(|report| &report.records)
        .filter(|record| record.elapsed >= STALL / 2)
        .count();
    let resets: usize = probes
        .iter()
        .chain(&sessions)
        .map(|report| report.count(Outcome::Reset))
        .sum();
    for report in probes.iter().chain(&sessions).chain(&new_pods) {
        println!("{}", report.figures());
        if report.failed() > 0 {
            println!(
                "failures of {}: {:?}",
                report.label,
                report.failure_summary()
            );
        }
    }
    println!(
        "figures: upgrade standby_ms={} sigterm_to_old_exit_ms={} old_exit={old_status} stall_ms={} stalled_requests={stalled} sessions_spanning_sigterm={spanning}/{} resets={resets} requests={} ok={}",
        standing_by.as_millis(),
        old_gone.as_millis(),
        STALL.as_millis(),
        sessions.len(),
        probes.iter().map(ProbeReport::sent).sum::<usize>(),
        probes.iter().map(ProbeReport::ok).sum::<usize>(),
    );
    println!("successor: {took_over}\nold daemon: {drained}");
    for node in [1, 2] {
        let log = cluster.node(node).ztunnel_log();
        let warnings: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("WARN") || line.contains("ERROR"))
            .collect();
        println!(
            "node {node} ztunnel warnings ({}), last ones: {:#?}",
            warnings.len(),
            &warnings[warnings.len().saturating_sub(8)..]
        );
    }

    assert_eq!(
        spanning,
        sessions.len(),
        "not every long-lived connection was open across the SIGTERM: the test proves nothing about them"
    );
    for report in &probes {
        assert!(report.done, "probe {} stopped early", report.label);
        assert_eq!(
            report.ok(),
            report.sent(),
            "requests on {} failed during the upgrade: {:?}",
            report.label,
            report.failure_summary()
        );
    }
    for report in &sessions {
        assert!(
            report.done && report.ok() == report.sent(),
            "the long-lived connection {} did not complete cleanly: {:?}",
            report.label,
            report.failure_summary()
        );
    }
    assert_eq!(resets, 0, "connections were reset during the upgrade");
    for report in &new_pods {
        assert!(
            report.done && report.ok() == report.sent(),
            "{}: a pod enrolled during or after the upgrade is not served: {:?}",
            report.label,
            report.failure_summary()
        );
    }
    assert!(
        old_status.success(),
        "the old ztunnel exited with {old_status}"
    );
    assert!(!took_over.is_empty(), "the successor never took over");
    assert!(
        log.lines()
            .any(|line| line.contains("enrolling pod") && line.contains("pod=late1")),
        "the CNI plugin did not reach the successor on the enrollment socket"
    );
    Ok(())
}
