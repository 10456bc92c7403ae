//! No single point of failure (5): rotating every workload certificate under open tunnels drops
//! nothing. Both nodes read their workload certificates from a directory (`--cert-dir`, as with
//! an external issuer); while a request every 50 ms crosses between the nodes in both directions
//! and long-lived connections are open, every certificate on both nodes is re-issued. Each node
//! must put the new certificates in force, and every request and every open connection must
//! complete.

use std::{path::Path, time::SystemTime};

use ztunnel_e2e::{
    cluster::Cluster,
    four_pods::{self, FourPods},
    traffic::{EchoServer, Outcome, ProbeReport, ProbeSpec, Prober},
    wait::{DEFAULT_TIMEOUT, wait_until},
    ztunnel::binary,
};

const ECHO_PORT: u16 = 7000;
/// New-connection rounds per direction (50 ms apart: 6 s around the rotation).
const PROBE_ROUNDS: u32 = 120;
/// Rounds of each long-lived connection (5 s: open before the rotation, ending after it).
const SESSION_ROUNDS: u32 = 100;
const WARM_ROUNDS: usize = 10;
/// Service accounts with pods on each node.
const ACCOUNTS: [(u8, [&str; 2]); 2] = [(1, ["client1", "server1"]), (2, ["client2", "server2"])];

/// `ztunnel ca issue` of `account`'s certificate into `directory` (the file layout the daemon
/// reads with `--cert-dir`).
fn issue(root: &Path, account: &str, directory: &Path) -> anyhow::Result<()> {
    let identity = format!("spiffe://cluster.local/ns/default/sa/{account}");
    let output = std::process::Command::new(binary()?)
        .args(["ca", "issue"])
        .arg(root)
        .arg(&identity)
        .arg(directory)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "ztunnel ca issue {identity}: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

fn certificate_directory(cluster: &Cluster, node: u8) -> std::path::PathBuf {
    cluster.env.scratch.join(format!("certs-n{node}"))
}

fn setup() -> anyhow::Result<FourPods> {
    let mut cluster = Cluster::new("nspof_rotation", 2, four_pods::MESH)?;
    for (node, accounts) in ACCOUNTS {
        let directory = certificate_directory(&cluster, node);
        for account in accounts {
            issue(&cluster.node(node).ca_dir, account, &directory)?;
        }
        let directory = directory.display().to_string();
        // The inbound side logs each accepted HBONE connection's client certificate serial.
        cluster.node_mut(node).log_filter = Some("info,ztunnel::proxy::inbound=debug".to_owned());
        cluster.node_mut(node).start_ztunnel(&[
            "--cert-dir",
            &directory,
            "--cert-refresh-seconds",
            "1",
        ])?;
    }
    FourPods::in_cluster(cluster)
}

#[test]
fn rotating_every_certificate_under_open_tunnels_drops_nothing() -> anyhow::Result<()> {
    let mesh = setup()?;
    let echo1 = EchoServer::start(mesh.server1.netns(), (mesh.server1.ip, ECHO_PORT).into())?;
    let echo2 = EchoServer::start(mesh.server2.netns(), (mesh.server2.ip, ECHO_PORT).into())?;
    let cluster = &mesh.cluster;
    let paths = [
        ("node1-to-node2", &mesh.client1, &echo2),
        ("node2-to-node1", &mesh.client2, &echo1),
    ];
    let mut probes = Vec::new();
    for (label, from, to) in paths {
        let spec = ProbeSpec::connections(to.address(), PROBE_ROUNDS);
        probes.push(Prober::start(cluster, from, label, spec)?);
        let session = ProbeSpec::session(to.address(), SESSION_ROUNDS);
        probes.push(Prober::start(
            cluster,
            from,
            &format!("{label}-session"),
            session,
        )?);
    }
    for probe in &probes {
        probe.wait_ok(WARM_ROUNDS)?;
    }

    let offsets: Vec<usize> = ACCOUNTS
        .iter()
        .map(|(node, _)| cluster.node(*node).ztunnel_log().len())
        .collect();
    for (node, accounts) in ACCOUNTS {
        let directory = certificate_directory(cluster, node);
        for account in accounts {
            issue(&cluster.node(node).ca_dir, account, &directory)?;
        }
    }
    let mut replaced = Vec::new();
    for ((node, accounts), offset) in ACCOUNTS.iter().zip(&offsets) {
        for account in accounts {
            let needle = format!("identity=spiffe://cluster.local/ns/default/sa/{account}");
            let line = wait_until(
                &format!("node {node} to put {account}'s new certificate in force"),
                DEFAULT_TIMEOUT,
                || {
                    let log = cluster.node(*node).ztunnel_log();
                    log.get(*offset..)?
                        .lines()
                        .find(|line| {
                            line.contains("workload certificate replaced") && line.contains(&needle)
                        })
                        .map(str::to_owned)
                },
            )?;
            replaced.push(line);
        }
    }
    let rotated = SystemTime::now();
    // The serial each client account was given, from the line that put it in force.
    let new_serial = |account: &str| -> Option<String> {
        let needle = format!("sa/{account} ");
        let line = replaced.iter().find(|line| line.contains(&needle))?;
        let serial = line.split("serial=").nth(1)?.split_whitespace().next()?;
        Some(serial.to_owned())
    };

    let reports: Vec<ProbeReport> = probes
        .into_iter()
        .map(Prober::finish)
        .collect::<anyhow::Result<_>>()?;
    let resets: usize = reports
        .iter()
        .map(|report| report.count(Outcome::Reset))
        .sum();
    let spanning: Vec<&str> = reports
        .iter()
        .filter(|report| report.spans(rotated))
        .map(|report| report.label.as_str())
        .collect();
    for report in &reports {
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
        "figures: rotation certificates_replaced={} requests={} ok={} resets={resets} spanning_rotation={}/{}",
        replaced.len(),
        reports.iter().map(ProbeReport::sent).sum::<usize>(),
        reports.iter().map(ProbeReport::ok).sum::<usize>(),
        spanning.len(),
        reports.len()
    );
    for line in &replaced {
        println!("{line}");
    }
    // New tunnels after the rotation present the new certificates: the destination node
    // accepts an HBONE connection whose client certificate has the new serial.
    let mut presented = Vec::new();
    for (client, server_node, offset) in [("client1", 2, offsets[1]), ("client2", 1, offsets[0])] {
        let serial = new_serial(client)
            .ok_or_else(|| anyhow::anyhow!("no new serial for {client} in {replaced:?}"))?;
        let log = cluster.node(server_node).ztunnel_log();
        let accepted = log.get(offset..).unwrap_or_default().lines().any(|line| {
            line.contains("HBONE connection accepted")
                && line.contains(&format!("sa/{client} "))
                && line.contains(&format!("serial={serial}"))
        });
        println!(
            "node {server_node} accepted a connection of {client} with its new certificate {serial}: {accepted}"
        );
        presented.push((client, accepted));
    }

    assert_eq!(
        spanning.len(),
        reports.len(),
        "not every probe ran across the rotation: the test proves nothing about them"
    );
    for report in &reports {
        assert!(report.done, "probe {} stopped early", report.label);
        assert_eq!(
            report.ok(),
            report.sent(),
            "requests on {} failed across the rotation: {:?}",
            report.label,
            report.failure_summary()
        );
    }
    assert_eq!(resets, 0, "connections were reset by the rotation");
    assert!(
        presented.iter().all(|(_, accepted)| *accepted),
        "new tunnels did not present the new certificates: {presented:?}"
    );
    Ok(())
}
