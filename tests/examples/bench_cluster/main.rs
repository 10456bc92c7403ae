//! `cargo xtask bench` driver: pod-to-pod figures across two simulated nodes for three
//! scenarios, interleaved (direct, ebpf, iptables, direct, ...) over several rounds:
//!
//! - **direct**: two pods outside the mesh (protocol TCP: the CNI plugin leaves them alone);
//! - **ebpf**: two mesh pods, both ztunnels capturing with eBPF (`--capture ebpf`);
//! - **iptables**: the same on a second cluster whose ztunnels run `--capture iptables`;
//! - **relays**: a reference, not a dataplane: the direct pods' traffic through a pair of relays
//!   placed where the ztunnels' listeners are (the client pod's loopback, the server pod), the
//!   first sealing AES-256-GCM records and the second opening them (`ztunnel_e2e::relay`). It
//!   shows what the hops and the cipher alone cost, without TLS, HTTP/2 or capture.
//!
//! Figures: iperf3 one-stream throughput; request/response latency on one connection (1 B and
//! 1 KiB); new-connection rate and connect+exchange+close latency; ztunnel CPU seconds per GiB
//! and per 10k connections (utime+stime of both nodes' ztunnels); ztunnel RSS idle and with
//! 1,000 open tunnels. Writes `bench.json` and `bench.svg` and prints a table; asserts nothing.
//!
//! usage: bench_cluster [--quick] [--rounds N] [--out-dir DIR]
//!        bench_cluster loadgen <mode> ...   (run inside pods by the driver itself)

mod interrupt;
mod loadgen;
mod measure;
mod report;

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf, time::Instant};

use anyhow::Context;
use ztunnel_e2e::{
    apps::listening,
    cluster::{Cluster, ClusterPod},
    process::Process,
    wait::{DEFAULT_TIMEOUT, wait_until},
};

/// Echo port of the load generator's server.
const ECHO_PORT: u16 = 7000;
/// iperf3's port.
const IPERF_PORT: u16 = 5201;

/// One cluster carries the direct and the eBPF pairs: pods of protocol TCP are not enrolled.
const EBPF_MESH: &str = r#"
workloads:
- {uid: b//client, name: client, namespace: bench, serviceAccount: client, workloadIps: ["198.18.1.2"], protocol: HBONE, node: node-1}
- {uid: b//direct-client, name: direct-client, namespace: bench, serviceAccount: direct, workloadIps: ["198.18.1.3"], protocol: TCP, node: node-1}
- {uid: b//server, name: server, namespace: bench, serviceAccount: server, workloadIps: ["198.18.2.2"], protocol: HBONE, node: node-2}
- {uid: b//direct-server, name: direct-server, namespace: bench, serviceAccount: direct, workloadIps: ["198.18.2.3"], protocol: TCP, node: node-2}
"#;

const IPTABLES_MESH: &str = r#"
workloads:
- {uid: b//client, name: client, namespace: bench, serviceAccount: client, workloadIps: ["198.18.1.2"], protocol: HBONE, node: node-1}
- {uid: b//server, name: server, namespace: bench, serviceAccount: server, workloadIps: ["198.18.2.2"], protocol: HBONE, node: node-2}
"#;

/// How long and how often each figure is measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    rounds: usize,
    iperf_seconds: u32,
    round_trips: usize,
    connect_seconds: f64,
    connect_concurrency: usize,
    open_tunnels: usize,
}

impl Plan {
    fn full() -> Self {
        Self {
            rounds: 5,
            iperf_seconds: 10,
            round_trips: 10_000,
            connect_seconds: 5.0,
            connect_concurrency: 8,
            open_tunnels: 1000,
        }
    }

    fn quick() -> Self {
        Self {
            rounds: 2,
            iperf_seconds: 2,
            round_trips: 2000,
            connect_seconds: 2.0,
            connect_concurrency: 8,
            open_tunnels: 1000,
        }
    }
}

/// A client pod, a server pod and the ztunnels between them (none for direct).
pub struct Scenario<'a> {
    name: &'static str,
    cluster: &'a Cluster,
    client: &'a ClusterPod,
    /// The address the client dials: the server's, or the first relay's.
    target: Ipv4Addr,
    ztunnels: Vec<u32>,
    /// Reference relays (the relays scenario): their CPU is counted as the ztunnels' is.
    relays: Vec<u32>,
    _servers: Vec<Process>,
}

impl Scenario<'_> {
    fn echo_address(&self) -> String {
        format!("{}:{ECHO_PORT}", self.target)
    }

    /// The processes between client and server whose CPU is measured.
    fn proxies(&self) -> impl Iterator<Item = &u32> {
        self.ztunnels.iter().chain(&self.relays)
    }
}

/// Samples per scenario and figure, in round order.
pub type Samples = BTreeMap<&'static str, BTreeMap<&'static str, Vec<f64>>>;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("loadgen") {
        return loadgen::run(&args[1..]);
    }
    let mut quick = false;
    let mut rounds = None;
    let mut out_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench"));
    let mut words = args.iter();
    while let Some(flag) = words.next() {
        match flag.as_str() {
            "--quick" => quick = true,
            "--rounds" => {
                rounds = Some(words.next().context("--rounds needs a value")?.parse()?);
            }
            "--out-dir" => out_dir = words.next().context("--out-dir needs a value")?.into(),
            other => {
                anyhow::bail!("unknown option {other} (expected --quick, --rounds, --out-dir)")
            }
        }
    }
    let mut plan = if quick { Plan::quick() } else { Plan::full() };
    if let Some(rounds) = rounds {
        plan.rounds = rounds;
    }
    let started = Instant::now();
    interrupt::install()?;
    println!("bench plan: {plan:?}");

    let mut ebpf_cluster = Cluster::new("bench_ebpf", 2, EBPF_MESH)?;
    ebpf_cluster.node_mut(1).start_ztunnel(&[])?;
    ebpf_cluster.node_mut(2).start_ztunnel(&[])?;
    let mut iptables_cluster = Cluster::new("bench_iptables", 2, IPTABLES_MESH)?;
    iptables_cluster
        .node_mut(1)
        .start_ztunnel(&["--capture", "iptables"])?;
    iptables_cluster
        .node_mut(2)
        .start_ztunnel(&["--capture", "iptables"])?;
    let client = ebpf_cluster.pod(1, "bench", "client")?;
    let direct_client = ebpf_cluster.pod(1, "bench", "direct-client")?;
    let server = ebpf_cluster.pod(2, "bench", "server")?;
    let direct_server = ebpf_cluster.pod(2, "bench", "direct-server")?;
    let iptables_client = iptables_cluster.pod(1, "bench", "client")?;
    let iptables_server = iptables_cluster.pod(2, "bench", "server")?;
    for (pod, expected) in [
        (&client, "198.18.1.2"),
        (&direct_client, "198.18.1.3"),
        (&server, "198.18.2.2"),
        (&direct_server, "198.18.2.3"),
        (&iptables_client, "198.18.1.2"),
        (&iptables_server, "198.18.2.2"),
    ] {
        anyhow::ensure!(
            pod.ip.to_string() == expected,
            "pod {} got {}, the mesh config says {expected}",
            pod.name,
            pod.ip
        );
    }
    // Each round opens thousands of connections per client pod to the same server port; with
    // the kernel default (TIME_WAIT reuse on loopback only) the direct client, whose connections
    // are not on loopback, ran out of ports in round 2 (136 connections/s, 59 ms connects). A
    // load generator host reuses them; so do all three client pods here.
    for (cluster, pod) in [
        (&ebpf_cluster, &client),
        (&ebpf_cluster, &direct_client),
        (&iptables_cluster, &iptables_client),
    ] {
        let output = cluster.run_in_pod(pod, &["sysctl", "-w", "net.ipv4.tcp_tw_reuse=1"])?;
        anyhow::ensure!(
            output.status.success(),
            "cannot enable TIME_WAIT reuse in pod {}: {}",
            pod.name,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let pids = |cluster: &Cluster| -> anyhow::Result<Vec<u32>> {
        [1, 2]
            .iter()
            .map(|node| {
                cluster
                    .node(*node)
                    .ztunnel_pid()
                    .with_context(|| format!("node {node}'s ztunnel is not running"))
            })
            .collect()
    };
    let scenarios = vec![
        scenario(
            "direct",
            &ebpf_cluster,
            &direct_client,
            &direct_server,
            vec![],
        )?,
        scenario(
            "ebpf",
            &ebpf_cluster,
            &client,
            &server,
            pids(&ebpf_cluster)?,
        )?,
        scenario(
            "iptables",
            &iptables_cluster,
            &iptables_client,
            &iptables_server,
            pids(&iptables_cluster)?,
        )?,
        // After direct: it uses the direct pair's servers.
        through_relays(&ebpf_cluster, &direct_client, &direct_server)?,
    ];

    let mut samples: Samples = BTreeMap::new();
    for scenario in &scenarios {
        // Warm-up: certificates issued, HBONE pool connected, page cache warm.
        interrupt::check()?;
        measure::request_response(scenario, 1, 100)?;
        for (figure, value) in measure::rss_mib(scenario) {
            samples
                .entry(scenario.name)
                .or_default()
                .entry(figure)
                .or_default()
                .push(value);
        }
    }
    for round in 1..=plan.rounds {
        for scenario in &scenarios {
            interrupt::check()?;
            let figures = measure::round(scenario, &plan)?;
            println!("round {round} {}: {figures:?}", scenario.name);
            for (figure, value) in figures {
                samples
                    .entry(scenario.name)
                    .or_default()
                    .entry(figure)
                    .or_default()
                    .push(value);
            }
        }
    }
    for scenario in scenarios
        .iter()
        .filter(|scenario| !scenario.ztunnels.is_empty())
    {
        interrupt::check()?;
        let rss = measure::rss_with_open_tunnels(scenario, plan.open_tunnels)?;
        samples
            .entry(scenario.name)
            .or_default()
            .insert("rss_open_tunnels_mib", vec![rss]);
    }
    let summary = report::summarize(&samples);
    report::print_table(&summary, &plan);
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let json_path = out_dir.join("bench.json");
    let svg_path = out_dir.join("bench.svg");
    report::write_json(&json_path, &summary, &samples, &plan, quick)?;
    report::write_svg(&svg_path, &summary)?;
    println!(
        "wrote {} and {} in {:.0} s",
        json_path.display(),
        svg_path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Starts the echo server and iperf3 in the server pod and waits until both listen.
fn scenario<'a>(
    name: &'static str,
    cluster: &'a Cluster,
    client: &'a ClusterPod,
    server: &'a ClusterPod,
    ztunnels: Vec<u32>,
) -> anyhow::Result<Scenario<'a>> {
    let exe = std::env::current_exe()?.display().to_string();
    let echo = format!("{}:{ECHO_PORT}", server.ip);
    let ip = server.ip.to_string();
    let servers = vec![
        cluster.spawn_in_pod(server, "echo", &[&exe, "loadgen", "serve", &echo])?,
        cluster.spawn_in_pod(server, "iperf3-server", &["iperf3", "-s", "-B", &ip])?,
    ];
    for address in [echo, format!("{ip}:{IPERF_PORT}")] {
        wait_until(
            &format!("{name}: a server to listen on {address}"),
            DEFAULT_TIMEOUT,
            || listening(server.netns(), &address).then_some(()),
        )?;
    }
    Ok(Scenario {
        name,
        cluster,
        client,
        target: server.ip,
        ztunnels,
        relays: Vec::new(),
        _servers: servers,
    })
}

/// The relays scenario: the direct pods (not enrolled) with a sealing relay on the client pod's
/// loopback, as the outbound listener is, and an opening relay in the server pod, as the HBONE
/// listener is, for the echo and iperf3 ports. The direct scenario's servers answer.
fn through_relays<'a>(
    cluster: &'a Cluster,
    client: &'a ClusterPod,
    server: &'a ClusterPod,
) -> anyhow::Result<Scenario<'a>> {
    let exe = std::env::current_exe()?.display().to_string();
    let loopback = Ipv4Addr::LOCALHOST;
    let ports = [ECHO_PORT, IPERF_PORT];
    let relay_port = |port: u16| port + 10_000;
    let mut sealing = vec![exe.clone(), "loadgen".into(), "relay".into(), "seal".into()];
    let mut opening = vec![exe, "loadgen".into(), "relay".into(), "open".into()];
    for port in ports {
        sealing.push(format!("{loopback}:{port}"));
        sealing.push(format!("{}:{}", server.ip, relay_port(port)));
        opening.push(format!("{}:{}", server.ip, relay_port(port)));
        opening.push(format!("{}:{port}", server.ip));
    }
    fn words(argv: &[String]) -> Vec<&str> {
        argv.iter().map(String::as_str).collect()
    }
    let relays = vec![
        cluster.spawn_in_pod(server, "relay-open", &words(&opening))?,
        cluster.spawn_in_pod(client, "relay-seal", &words(&sealing))?,
    ];
    for port in ports {
        for (pod, address) in [
            (server, format!("{}:{}", server.ip, relay_port(port))),
            (client, format!("{loopback}:{port}")),
        ] {
            wait_until(
                &format!("relays: a relay to listen on {address}"),
                DEFAULT_TIMEOUT,
                || listening(pod.netns(), &address).then_some(()),
            )?;
        }
    }
    Ok(Scenario {
        name: "relays",
        cluster,
        client,
        target: loopback,
        ztunnels: Vec::new(),
        relays: relays.iter().map(Process::pid).collect(),
        _servers: relays,
    })
}
