//! A workload behind a replicated waypoint: every connection to it goes through one of the
//! replicas (which applies the workload's policy with the client's identity), the workload's
//! node proxy refuses HBONE that did not come through the waypoint, and SIGKILLing one replica
//! under steady traffic costs no request: the client's node proxy retries the dead replica's
//! refusal on the other one before the client notices, and skips the dead one afterwards.
//!
//! Figures are printed on lines starting `figures:`.

use std::time::Duration;

use ztunnel_e2e::{
    apps::Nginx,
    cluster::{Cluster, ClusterPod},
    probe::{Probe, ProbePlan, ProbeReport, now_ms},
    wait::{DEFAULT_TIMEOUT, wait_until},
    waypoint::WaypointReplica,
    ztunnel::binary,
};

/// host-local hands out .2, .3, ... in creation order on each node; `setup` checks it. The
/// waypoint replicas are `protocol: TCP` workloads: the CNI chain does not enroll them (a
/// waypoint's own traffic is not captured), and they are the endpoints of the waypoint service.
const MESH: &str = r#"
workloads:
- {uid: t//client, name: client, namespace: default, serviceAccount: client, workloadIps: ["198.18.1.2"], protocol: HBONE, node: node-1}
- {uid: t//waypoint-1, name: waypoint-1, namespace: default, serviceAccount: waypoint, workloadIps: ["198.18.1.3"], protocol: TCP, node: node-1,
   services: {"default/waypoint.default.svc.cluster.local": {15008: 15008}}}
- {uid: t//rogue, name: rogue, namespace: default, serviceAccount: rogue, workloadIps: ["198.18.1.4"], protocol: TCP, node: node-1}
- {uid: t//denied, name: denied, namespace: default, serviceAccount: denied, workloadIps: ["198.18.1.5"], protocol: HBONE, node: node-1}
- {uid: t//web, name: web, namespace: default, serviceAccount: web, workloadIps: ["198.18.2.2"], protocol: HBONE, node: node-2,
   waypoint: {destination: "default/waypoint.default.svc.cluster.local", hboneMtlsPort: 15008}}
- {uid: t//waypoint-2, name: waypoint-2, namespace: default, serviceAccount: waypoint, workloadIps: ["198.18.2.3"], protocol: TCP, node: node-2,
   services: {"default/waypoint.default.svc.cluster.local": {15008: 15008}}}
services:
- {name: waypoint, namespace: default, hostname: waypoint.default.svc.cluster.local, ports: {15008: 15008}}
policies:
- name: deny-denied
  namespace: default
  scope: Namespace
  action: Deny
  rules:
  - - - principals: [!Exact cluster.local/ns/default/sa/denied]
"#;

const WEB_PAGE: &str = "web behind a waypoint: 5d1e\n";
const WEB: &str = "198.18.2.2:80";
const WAYPOINT_IDENTITY: &str = "spiffe://cluster.local/ns/default/sa/waypoint";
const CLIENT_IDENTITY: &str = "spiffe://cluster.local/ns/default/sa/client";
const INTERVAL: Duration = Duration::from_millis(50);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

struct Mesh {
    client: ClusterPod,
    rogue: ClusterPod,
    denied: ClusterPod,
    _web: ClusterPod,
    replicas: Vec<(WaypointReplica, ClusterPod)>,
    nginx: Nginx,
    // Dropped last: pods (CNI DEL) go before the nodes and the underlay.
    cluster: Cluster,
}

fn setup(test: &str) -> anyhow::Result<Mesh> {
    let mut cluster = Cluster::new(test, 2, MESH)?;
    cluster.node_mut(1).start_ztunnel(&[])?;
    cluster.node_mut(2).start_ztunnel(&[])?;
    let client = cluster.pod(1, "default", "client")?;
    let waypoint_1 = cluster.pod(1, "default", "waypoint-1")?;
    let rogue = cluster.pod(1, "default", "rogue")?;
    let denied = cluster.pod(1, "default", "denied")?;
    let web = cluster.pod(2, "default", "web")?;
    let waypoint_2 = cluster.pod(2, "default", "waypoint-2")?;
    for (pod, expected) in [
        (&client, "198.18.1.2"),
        (&waypoint_1, "198.18.1.3"),
        (&rogue, "198.18.1.4"),
        (&denied, "198.18.1.5"),
        (&web, "198.18.2.2"),
        (&waypoint_2, "198.18.2.3"),
    ] {
        anyhow::ensure!(
            pod.ip.to_string() == expected,
            "pod {} got {} from host-local, the mesh config says {expected}",
            pod.name,
            pod.ip
        );
    }
    let nginx = Nginx::start(&cluster, &web, WEB_PAGE)?;
    let mut replicas = Vec::new();
    for pod in [waypoint_1, waypoint_2] {
        let replica = WaypointReplica::start(&cluster, &pod, "default", "waypoint")?;
        replicas.push((replica, pod));
    }
    Ok(Mesh {
        client,
        rogue,
        denied,
        _web: web,
        replicas,
        nginx,
        cluster,
    })
}

fn probe(mesh: &Mesh, count: u32) -> anyhow::Result<Probe> {
    probe_with_timeout(mesh, count, REQUEST_TIMEOUT)
}

fn probe_with_timeout(mesh: &Mesh, count: u32, timeout: Duration) -> anyhow::Result<Probe> {
    Probe::start(
        env!("CARGO_BIN_EXE_probe"),
        &mesh.cluster,
        &mesh.client,
        &ProbePlan {
            target: WEB,
            count,
            interval: INTERVAL,
            timeout,
            expected: WEB_PAGE.trim(),
        },
    )
}

fn access_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains("ztunnel::access"))
        .map(str::to_owned)
        .collect()
}

/// Waits (bounded) for `condition`; the assertions that follow say what was missing if it
/// never held.
fn settle(what: &str, mut condition: impl FnMut() -> bool) {
    if let Err(error) = wait_until(what, DEFAULT_TIMEOUT, || condition().then_some(())) {
        println!("{error:#}");
    }
}

/// The `/metrics` text of whatever listens on 127.0.0.1:15020 in `pod`'s or a node's netns.
fn scrape(output: std::process::Output, whose: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        output.status.success(),
        "scraping the metrics of {whose} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

const CURL_METRICS: [&str; 5] = [
    "curl",
    "-sS",
    "--max-time",
    "5",
    "http://127.0.0.1:15020/metrics",
];

/// The sum of every sample of `metric` whose line contains all of `labels`.
fn metric_sum(metrics: &str, metric: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(metric))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn waypoint_replicas_carry_all_traffic_and_survive_a_sigkill() -> anyhow::Result<()> {
    let mut mesh = setup("waypoint_replicas")?;

    // 1. Steady traffic: every connection goes through a replica, and both replicas take some.
    let warm = probe(&mesh, 20)?.finish(Duration::from_secs(30))?;
    // A connection is logged when it closes, just after the client has its answer.
    settle(
        "every warm-up connection to be logged by a waypoint and by node 2",
        || {
            let waypoints: usize = mesh
                .replicas
                .iter()
                .map(|(r, _)| r.access_log().len())
                .sum();
            let node2 = access_lines(&mesh.cluster.node(2).ztunnel_log())
                .iter()
                .filter(|line| line.contains("inbound") && line.contains(WEB))
                .count();
            waypoints >= warm.sent() && node2 >= warm.sent()
        },
    );
    let waypoint_lines: Vec<Vec<String>> = mesh
        .replicas
        .iter()
        .map(|(replica, _)| replica.access_log())
        .collect();
    let served: Vec<usize> = waypoint_lines.iter().map(Vec::len).collect();
    let node2_inbound: Vec<String> = access_lines(&mesh.cluster.node(2).ztunnel_log())
        .into_iter()
        .filter(|line| line.contains("inbound") && line.contains(WEB))
        .collect();
    let from_waypoint = node2_inbound
        .iter()
        .filter(|line| line.contains(&format!("src_identity={WAYPOINT_IDENTITY}")))
        .count();
    let mut waypoint_metrics = Vec::new();
    for (replica, pod) in &mesh.replicas {
        let text = scrape(
            mesh.cluster.run_in_pod(pod, &CURL_METRICS)?,
            &replica.pod_name,
        )?;
        waypoint_metrics.push(metric_sum(
            &text,
            "istio_tcp_connections_opened",
            &["reporter=\"waypoint\"", "destination_workload=\"web\""],
        ));
    }
    println!(
        "warm-up: {} sent, {} ok; waypoint access-log lines per replica {served:?}; \
         waypoint istio_tcp_connections_opened{{reporter=\"waypoint\"}} per replica {waypoint_metrics:?}; \
         node 2 inbound lines for {WEB}: {} ({from_waypoint} from the waypoint identity)",
        warm.sent(),
        warm.ok(),
        node2_inbound.len()
    );
    let nginx_clients = mesh.nginx.clients_after(warm.sent());
    println!("nginx saw clients {nginx_clients:?}");
    println!(
        "sample waypoint line: {:?}",
        waypoint_lines.iter().flatten().next()
    );
    println!("sample node 2 inbound line: {:?}", node2_inbound.first());
    assert_eq!(
        warm.ok(),
        warm.sent(),
        "warm-up requests failed: {:?}",
        warm.failed()
    );
    assert_eq!(
        served.iter().sum::<usize>(),
        warm.sent(),
        "every request is one connection through a waypoint replica"
    );
    assert!(
        served.iter().all(|count| *count > 0),
        "both replicas take traffic (round robin): {served:?}"
    );
    assert_eq!(
        waypoint_metrics.iter().sum::<f64>() as usize,
        warm.sent(),
        "the waypoints' metrics count every connection"
    );
    assert_eq!(
        (node2_inbound.len(), from_waypoint),
        (warm.sent(), warm.sent()),
        "web's node proxy saw every connection, all from the waypoint's identity"
    );

    assert!(
        nginx_clients.len() == warm.sent()
            && nginx_clients.iter().all(|client| client == "198.18.1.2"),
        "web sees the client pod's own address, not the waypoint's: {nginx_clients:?}"
    );

    // 2. The waypoint applies web's policy with the client's identity.
    let denied = mesh.cluster.run_in_pod(
        &mesh.denied,
        &["curl", "-sS", "--max-time", "5", &format!("http://{WEB}/")],
    )?;
    let denial_lines: Vec<String> = mesh
        .replicas
        .iter()
        .flat_map(|(replica, _)| replica.access_log())
        .filter(|line| line.contains("sa/denied"))
        .collect();
    println!(
        "denied pod: curl {} ({}), waypoint lines {denial_lines:?}",
        denied.status,
        String::from_utf8_lossy(&denied.stderr).trim()
    );
    assert!(!denied.status.success(), "the denied pod reached web");
    assert!(
        denial_lines
            .iter()
            .any(|line| line.contains("401") && line.contains("denied by policy")),
        "a waypoint refused the denied pod by policy"
    );

    // 3. A pod that tunnels to web directly, bypassing the waypoint, is refused.
    let bypass = bypass_attempt(&mesh)?;
    println!("direct HBONE to web from the rogue pod with the client's certificate: {bypass}");
    assert_eq!(
        bypass.get("status").and_then(serde_json::Value::as_u64),
        Some(401),
        "web's node proxy answers 401 to HBONE that did not come through its waypoint"
    );

    // 4. SIGKILL one replica under a request every 50 ms.
    let count = 80;
    let running = probe(&mesh, count)?;
    // Killed just after a request ended, so that the kill tests new connections; a request
    // still under way at the kill (its replica dies with it) is reported apart.
    running.wait_for(20, Duration::from_secs(10))?;
    let survivor_lines_before = mesh.replicas[1].0.access_log().len();
    let killed_at = now_ms();
    mesh.replicas[0].0.kill()?;
    let report = running.finish(Duration::from_secs(30))?;
    let node1_metrics = scrape(mesh.cluster.node(1).run(&CURL_METRICS)?, "node 1")?;
    let retries = metric_sum(&node1_metrics, "ztunnel_endpoint_retries", &[]);
    let retry_lines: Vec<&str> = node1_metrics
        .lines()
        .filter(|line| line.starts_with("ztunnel_endpoint_retries"))
        .collect();
    let node1_log = mesh.cluster.node(1).ztunnel_log();
    let marked = node1_log
        .lines()
        .filter(|line| line.contains("endpoint refused; skipping it"))
        .count();
    let after_kill = report
        .requests
        .iter()
        .filter(|request| request.at_ms >= killed_at)
        .count();
    settle(
        "the surviving replica to log the connections after the kill",
        || mesh.replicas[1].0.access_log().len() - survivor_lines_before >= after_kill,
    );
    let survivor_gained = mesh.replicas[1].0.access_log().len() - survivor_lines_before;
    let in_flight: Vec<_> = report
        .requests
        .iter()
        .filter(|request| ProbeReport::in_flight_at(request, killed_at))
        .collect();
    let failed_new: Vec<_> = report
        .failed()
        .into_iter()
        .filter(|request| !ProbeReport::in_flight_at(request, killed_at))
        .collect();
    print_figures(&report, killed_at, retries, after_kill, survivor_gained);
    println!(
        "figures: waypoint_replicas sigkill in_flight_at_kill={} failed_in_flight={} failed_new_connections={}",
        in_flight.len(),
        in_flight
            .iter()
            .filter(|request| request.outcome != "ok")
            .count(),
        failed_new.len()
    );
    println!("node 1 retry counters: {retry_lines:?}; 'skipping' log lines: {marked}");
    println!("failed requests: {:?}", report.failed());
    assert!(
        failed_new.is_empty(),
        "{} of {} new connections failed around the SIGKILL: {failed_new:?}",
        failed_new.len(),
        report.sent(),
    );
    assert!(
        retries >= 1.0,
        "the client's node proxy never retried: the dead replica was not tried after the kill"
    );
    assert!(marked >= 1, "the dead replica was not marked as refusing");
    assert!(
        survivor_gained >= after_kill,
        "the surviving replica served every request after the kill ({survivor_gained} < {after_kill})"
    );
    Ok(())
}

fn print_figures(
    report: &ProbeReport,
    killed_at: u128,
    retries: f64,
    after_kill: usize,
    survivor_gained: usize,
) {
    let recovery_ms = report.recovery_after(killed_at).map_or_else(
        || "none".to_owned(),
        |d| format!("{:.1}", d.as_secs_f64() * 1000.0),
    );
    println!(
        "figures: waypoint_replicas sigkill sent={} ok={} failed={} retries={retries} \
         requests_after_kill={after_kill} survivor_served_after_kill={survivor_gained} \
         time_to_recovery_ms={recovery_ms} max_latency_ms={:.1} max_latency_after_kill_ms={:.1} \
         interval_ms={}",
        report.sent(),
        report.ok(),
        report.failed().len(),
        report.max_latency_ms(),
        report.max_latency_after_ms(killed_at),
        INTERVAL.as_millis()
    );
}

/// From the rogue pod (not captured), an HBONE client with the *client*'s certificate tunnels
/// straight to web's 15008. Returns what the Python HBONE client reported.
fn bypass_attempt(mesh: &Mesh) -> anyhow::Result<serde_json::Value> {
    let python = std::env::var("ZTUNNEL_PYTHON").map_err(|_| {
        anyhow::anyhow!(
            "ZTUNNEL_PYTHON is not set: run with `cargo xtask test`, which prepares a Python with h2"
        )
    })?;
    let ca_dir = &mesh.cluster.node(1).ca_dir;
    let certs = mesh.cluster.env.scratch.join("rogue-certs");
    let issued = std::process::Command::new(binary()?)
        .arg("ca")
        .arg("issue")
        .arg(ca_dir)
        .arg(CLIENT_IDENTITY)
        .arg(&certs)
        .output()?;
    anyhow::ensure!(
        issued.status.success(),
        "ztunnel ca issue failed: {}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let client = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/hbone_client.py");
    let path = |p: std::path::PathBuf| p.display().to_string();
    let argv = [
        python,
        path(client),
        "--connect".into(),
        "198.18.2.2:15008".into(),
        "--authority".into(),
        WEB.into(),
        "--ca".into(),
        path(ca_dir.join("root-cert.pem")),
        "--cert".into(),
        path(certs.join("default/client/cert-chain.pem")),
        "--key".into(),
        path(certs.join("default/client/key.pem")),
        "--expect-san".into(),
        "spiffe://cluster.local/ns/default/sa/web".into(),
    ];
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let output = mesh.cluster.run_in_pod(&mesh.rogue, &argv)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().ok_or_else(|| {
        anyhow::anyhow!(
            "hbone_client.py printed nothing: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    Ok(serde_json::from_str(line)?)
}

/// A replica that vanishes without a word (its node's packets dropped, as when a node dies)
/// holds one connection until the CONNECT times out; that connection is then retried on the
/// other replica, the silent one is skipped, and no request fails.
#[test]
fn a_waypoint_replica_that_stops_answering_is_routed_around() -> anyhow::Result<()> {
    let mesh = setup("waypoint_blackhole")?;
    // Both replicas now have a pooled HBONE connection from node 1.
    let warm = probe(&mesh, 10)?.finish(Duration::from_secs(30))?;
    assert_eq!(
        warm.ok(),
        warm.sent(),
        "warm-up failed: {:?}",
        warm.failed()
    );
    let silent = mesh.replicas[1].0.ip.to_string();
    let route =
        mesh.cluster
            .node(1)
            .run(&["ip", "route", "add", "blackhole", &format!("{silent}/32")])?;
    anyhow::ensure!(
        route.status.success(),
        "cannot blackhole {silent} on node 1: {}",
        String::from_utf8_lossy(&route.stderr)
    );
    let blackholed_at = now_ms();
    // A request may wait for the CONNECT to time out on the silent replica: the client's
    // timeout is well above it, so that the wait shows in the figures instead of as a failure.
    let report =
        probe_with_timeout(&mesh, 40, Duration::from_secs(30))?.finish(Duration::from_secs(120))?;
    let node1_metrics = scrape(mesh.cluster.node(1).run(&CURL_METRICS)?, "node 1")?;
    let retries = metric_sum(&node1_metrics, "ztunnel_endpoint_retries", &[]);
    let timeouts = metric_sum(
        &node1_metrics,
        "ztunnel_endpoint_retries",
        &["reason=\"response_timeout\""],
    );
    let stalled: Vec<_> = report
        .requests
        .iter()
        .filter(|request| request.latency_ms > 1000.0)
        .collect();
    println!(
        "figures: waypoint_replicas blackhole sent={} ok={} failed={} retries={retries} \
         response_timeout_retries={timeouts} stalled_requests={} max_latency_ms={:.1} \
         time_to_recovery_ms={}",
        report.sent(),
        report.ok(),
        report.failed().len(),
        stalled.len(),
        report.max_latency_ms(),
        report.recovery_after(blackholed_at).map_or_else(
            || "none".to_owned(),
            |d| format!("{:.1}", d.as_secs_f64() * 1000.0)
        ),
    );
    println!(
        "stalled requests: {stalled:?}; failed: {:?}",
        report.failed()
    );
    assert!(
        report.failed().is_empty(),
        "requests failed while a replica was silent: {:?}",
        report.failed()
    );
    assert!(
        timeouts >= 1.0,
        "the silent replica was never given up on (no response_timeout retry)"
    );
    Ok(())
}
