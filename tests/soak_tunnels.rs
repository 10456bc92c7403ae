//! Load soak: 10,000 concurrent connections from a pod on node 1 to a pod on node 2, captured
//! and carried in HBONE (100 pooled TLS connections of 100 tunnels each), held open, exchanging
//! data on every one at open and again before close, then closed. Afterwards each ztunnel's open
//! file descriptors return to their starting count (within [`FD_MARGIN`]) and its RSS stays
//! within [`RSS_MARGIN_KIB`] of where it started. Open-file limits are raised the way a
//! deployment raises them (`RLIMIT_NOFILE` of the DaemonSet's container and of the workloads).
//!
//! `soak_tunnels` runs one cycle in CI; `soak_tunnels_long` (ignored; `cargo test -p
//! ztunnel-e2e --test soak_tunnels -- --ignored`) holds the connections for two minutes and
//! repeats the cycle three times.

use std::time::{Duration, Instant};

use anyhow::Context;
use ztunnel_e2e::{
    apps::listening,
    cluster::{Cluster, ClusterNode, ClusterPod},
    process::{Process, open_files_prefix},
    wait::wait_until,
};

const MESH: &str = r#"
workloads:
- {uid: t//load, name: load, namespace: default, serviceAccount: load, workloadIps: ["198.18.1.2"], protocol: HBONE, node: node-1}
- {uid: t//echo, name: echo, namespace: default, serviceAccount: echo, workloadIps: ["198.18.2.2"], protocol: HBONE, node: node-2}
"#;

/// Concurrent connections per cycle.
const CONNECTIONS: u64 = 10_000;
/// Connections of the warm-up cycle that precedes the baseline.
const WARM_UP_CONNECTIONS: u64 = 200;
/// Bytes echoed on each connection, once after it opens and once before it closes.
const BYTES: u64 = 4096;
/// File descriptors each process may hold (the soak needs one per connection, plus a few).
const OPEN_FILES: u64 = 65_536;
/// Descriptors a ztunnel may hold above its starting count once the cycle is over (measured:
/// none). Every connection (10,000 per side) and every pooled HBONE connection (100) must be
/// gone; a leak of any of them would exceed this at once.
const FD_MARGIN: i64 = 8;
/// What the wait after a cycle waits for: descriptors this close to the start (the pool
/// releases its connections over a couple of seconds; the assertion then allows [`FD_MARGIN`]).
const SETTLED_FDS: i64 = 2;
/// RSS a ztunnel may keep above its starting value once the cycle is over. The daemons run with
/// `--memory-release-seconds 2`, so freed heap goes back to the kernel (measured: ~4 MiB stay,
/// against ~220 MiB without the release); a leak of even 1 KiB per connection would show as
/// ~10 MiB per cycle.
const RSS_MARGIN_KIB: i64 = 16 * 1024;
/// How long to wait for descriptors and memory to come back after a cycle: the pool idle
/// timeout and the memory release period (2 s each) plus ample slack (a deadline for a
/// condition, not a figure).
const RELEASE_DEADLINE: Duration = Duration::from_secs(120);
/// How long opening or closing 10,000 connections may take before the test gives up.
const PHASE_DEADLINE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct Usage {
    fds: i64,
    rss_kib: i64,
}

fn usage(pid: u32) -> anyhow::Result<Usage> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("cannot list /proc/{pid}/fd"))?
        .count() as i64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .context("no VmRSS in /proc/<pid>/status")?;
    Ok(Usage { fds, rss_kib })
}

/// How many descriptors of each kind (`socket`, `anon_inode:[eventpoll]`, ...) `pid` holds.
fn descriptor_kinds(pid: u32) -> std::collections::BTreeMap<String, usize> {
    let mut kinds = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = std::fs::read_link(entry.path())
            .map(|path| path.display().to_string())
            .unwrap_or_default();
        let kind = target.split(':').next().unwrap_or("?").to_owned();
        let kind = if kind.starts_with('/') {
            "file".to_owned()
        } else {
            kind
        };
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
}

fn node_usage(node: &ClusterNode) -> anyhow::Result<Usage> {
    usage(node.ztunnel_pid().context("ztunnel is not running")?)
}

/// The JSON line the soak client printed for `phase`.
fn phase(client: &Process, name: &str) -> Option<serde_json::Value> {
    client
        .log_text()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|value| value["phase"] == name)
}

struct CycleFigures {
    opened: serde_json::Value,
    closed: serde_json::Value,
    held: [Usage; 2],
}

/// Where the echo server listens, in the echo pod.
const ECHO_ADDRESS: &str = "198.18.2.2:7000";

fn cycle(
    cluster: &Cluster,
    load: &ClusterPod,
    number: usize,
    connections: u64,
    hold: Duration,
) -> anyhow::Result<CycleFigures> {
    let (prefix, _) = open_files_prefix(OPEN_FILES)?;
    let count = connections.to_string();
    let bytes = BYTES.to_string();
    let mut argv: Vec<&str> = prefix.iter().map(String::as_str).collect();
    argv.extend([
        env!("CARGO_BIN_EXE_soak"),
        "client",
        ECHO_ADDRESS,
        &count,
        &bytes,
    ]);
    let mut client = cluster.spawn_in_pod(load, &format!("soak-client-{number}"), &argv)?;
    let started = Instant::now();
    let opened = wait_until(
        &format!("cycle {number}: {connections} connections to open"),
        PHASE_DEADLINE,
        || phase(&client, "open"),
    )
    .map_err(|error| error.context(client.log_text()))?;
    let held = [node_usage(cluster.node(1))?, node_usage(cluster.node(2))?];
    println!(
        "cycle {number}: {opened} after {:.1}s; held: node 1 ztunnel {:?}, node 2 ztunnel {:?}",
        started.elapsed().as_secs_f64(),
        held[0],
        held[1]
    );
    // Holding the connections is the point of the soak, not a synchronisation.
    std::thread::sleep(hold);
    client.signal(libc::SIGUSR1)?;
    let closed = wait_until(
        &format!("cycle {number}: connections to exchange again and close"),
        PHASE_DEADLINE,
        || phase(&client, "closed"),
    )
    .map_err(|error| error.context(client.log_text()))?;
    client.wait_exit(PHASE_DEADLINE)?;
    println!("cycle {number}: {closed}");
    Ok(CycleFigures {
        opened,
        closed,
        held,
    })
}

/// Waits until both ztunnels are back to `baseline` descriptors and RSS (within the margins):
/// every connection closed, every pooled HBONE connection released, freed memory returned.
fn wait_released(
    cluster: &Cluster,
    baseline: [Usage; 2],
    what: &str,
) -> anyhow::Result<[Usage; 2]> {
    let result = wait_until(what, RELEASE_DEADLINE, || {
        let now = [
            node_usage(cluster.node(1)).ok()?,
            node_usage(cluster.node(2)).ok()?,
        ];
        (0..2)
            .all(|index| {
                now[index].fds <= baseline[index].fds + SETTLED_FDS
                    && now[index].rss_kib <= baseline[index].rss_kib + RSS_MARGIN_KIB
            })
            .then_some(now)
    });
    let now = [node_usage(cluster.node(1))?, node_usage(cluster.node(2))?];
    let kinds: Vec<_> = [cluster.node(1), cluster.node(2)]
        .iter()
        .filter_map(|node| node.ztunnel_pid())
        .map(descriptor_kinds)
        .collect();
    let waited = match result {
        Ok(_) => "reached".to_owned(),
        Err(error) => format!("NOT reached ({error})"),
    };
    println!(
        "{what}: {waited}; node 1 {:?}, node 2 {:?} (baseline {:?}, {:?}); descriptor kinds {kinds:?}",
        now[0], now[1], baseline[0], baseline[1]
    );
    // The caller asserts on the figures, after printing them all.
    Ok(now)
}

fn soak(test: &str, cycles: usize, hold: Duration) -> anyhow::Result<()> {
    let mut cluster = Cluster::new(test, 2, MESH)?;
    // One pod holds every tunnel, so the per-pod cap is raised above the count, as a
    // deployment that expects such a pod would.
    let per_pod = (CONNECTIONS + 1024).to_string();
    for index in [1, 2] {
        cluster.node_mut(index).start_ztunnel_with_open_files(
            &[
                "--hbone-idle-seconds",
                "2",
                "--memory-release-seconds",
                "2",
                "--max-connections-per-pod",
                &per_pod,
            ],
            Some(OPEN_FILES),
        )?;
    }
    let load = cluster.pod(1, "default", "load")?;
    let echo = cluster.pod(2, "default", "echo")?;
    anyhow::ensure!(
        load.ip.to_string() == "198.18.1.2" && echo.ip.to_string() == "198.18.2.2",
        "host-local gave {} and {}, the mesh config says 198.18.1.2 and 198.18.2.2",
        load.ip,
        echo.ip
    );
    let (prefix, soft) = open_files_prefix(OPEN_FILES)?;
    anyhow::ensure!(
        soft > CONNECTIONS + 1024,
        "RLIMIT_NOFILE can be raised only to {soft} here; the soak needs more than {} descriptors per process",
        CONNECTIONS + 1024
    );
    let mut argv: Vec<&str> = prefix.iter().map(String::as_str).collect();
    argv.extend([env!("CARGO_BIN_EXE_soak"), "serve", ECHO_ADDRESS]);
    let _server = cluster.spawn_in_pod(&echo, "soak-server", &argv)?;
    wait_until("the echo server to listen", Duration::from_secs(10), || {
        listening(echo.netns(), ECHO_ADDRESS).then_some(())
    })?;
    // A small warm-up, so that the baseline is taken after lazy initialisation (TLS contexts,
    // runtime worker threads) and the first pool connection have happened once.
    let started = [node_usage(cluster.node(1))?, node_usage(cluster.node(2))?];
    let warm_up = cycle(&cluster, &load, 0, WARM_UP_CONNECTIONS, Duration::ZERO)?;
    anyhow::ensure!(
        warm_up.closed["closed"].as_u64() == Some(WARM_UP_CONNECTIONS),
        "the warm-up cycle failed: {} / {}",
        warm_up.opened,
        warm_up.closed
    );
    wait_released(&cluster, started, "warm-up: descriptors back to the start")?;
    let baseline = [node_usage(cluster.node(1))?, node_usage(cluster.node(2))?];
    for node in [cluster.node(1), cluster.node(2)] {
        if let Some(pid) = node.ztunnel_pid() {
            println!(
                "node {} descriptor kinds at baseline: {:?}",
                node.index,
                descriptor_kinds(pid)
            );
        }
    }
    println!(
        "baseline (RLIMIT_NOFILE {soft}): node 1 ztunnel {:?}, node 2 ztunnel {:?}",
        baseline[0], baseline[1]
    );
    let mut figures = Vec::new();
    for number in 1..=cycles {
        let cycle_figures = cycle(&cluster, &load, number, CONNECTIONS, hold)?;
        let after = wait_released(
            &cluster,
            baseline,
            &format!("cycle {number}: descriptors back to baseline"),
        )?;
        figures.push((cycle_figures, after));
    }
    println!(
        "summary ({CONNECTIONS} connections x {cycles} cycles, {BYTES} bytes echoed twice each, held {hold:?}):"
    );
    for (number, (cycle, after)) in figures.iter().enumerate() {
        for node in 0..2 {
            println!(
                "  cycle {} node {}: fds {} -> {} held -> {} after; RSS {} KiB -> {} KiB held -> {} KiB after",
                number + 1,
                node + 1,
                baseline[node].fds,
                cycle.held[node].fds,
                after[node].fds,
                baseline[node].rss_kib,
                cycle.held[node].rss_kib,
                after[node].rss_kib
            );
        }
        println!(
            "  cycle {}: open {} closed {}",
            number + 1,
            cycle.opened,
            cycle.closed
        );
    }

    for (number, (cycle, after)) in figures.iter().enumerate() {
        let number = number + 1;
        assert_eq!(
            cycle.opened["held"].as_u64(),
            Some(CONNECTIONS),
            "cycle {number}: every connection opened and echoed"
        );
        assert_eq!(
            cycle.opened["failed"].as_u64(),
            Some(0),
            "cycle {number}: no connection failed to open"
        );
        assert_eq!(
            cycle.closed["closed"].as_u64(),
            Some(CONNECTIONS),
            "cycle {number}: every held connection echoed again and closed cleanly"
        );
        for node in 0..2 {
            assert!(
                cycle.held[node].fds >= baseline[node].fds + CONNECTIONS as i64,
                "cycle {number}: node {} held a descriptor per connection (else the connections did not go through it)",
                node + 1
            );
            assert!(
                after[node].fds <= baseline[node].fds + FD_MARGIN,
                "cycle {number}: node {} ztunnel descriptors {} > baseline {} + {FD_MARGIN}",
                node + 1,
                after[node].fds,
                baseline[node].fds
            );
            assert!(
                after[node].rss_kib <= baseline[node].rss_kib + RSS_MARGIN_KIB,
                "cycle {number}: node {} ztunnel RSS {} KiB > baseline {} KiB + {RSS_MARGIN_KIB} KiB",
                node + 1,
                after[node].rss_kib,
                baseline[node].rss_kib
            );
        }
    }
    Ok(())
}

#[test]
fn ten_thousand_tunnels_open_exchange_close_and_leave_nothing_behind() -> anyhow::Result<()> {
    soak("soak_tunnels", 1, Duration::from_secs(1))
}

#[test]
#[ignore = "long soak for the issue note: three cycles, each held for two minutes"]
fn soak_tunnels_long() -> anyhow::Result<()> {
    soak("soak_long", 3, Duration::from_secs(120))
}
