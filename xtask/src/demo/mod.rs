//! `cargo xtask demo`: two simulated nodes with three pods each, real traffic through the mesh,
//! and what the mesh saw. Builds on the end-to-end harness (`ztunnel-e2e`), so everything it
//! makes is torn down when the cluster is dropped — also after Ctrl-C.

mod interrupt;
mod keep;
mod report;
mod traffic;

use std::{
    collections::BTreeMap,
    env,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use ztunnel_e2e::{
    apps::{Iperf3Server, Nginx},
    cluster::{Cluster, ClusterPod},
};

use crate::{
    command::{cargo, run_checked, workspace_root},
    setup,
};
use interrupt::Console;

/// The mesh: node 1 runs a client, a client whose service account a DENY policy names, and a
/// pod outside the mesh (`protocol: TCP`); node 2 runs a web server, an iperf3 server and a
/// second client. host-local hands out .2, .3, .4 in creation order.
const MESH: &str = r#"
workloads:
- {uid: demo//v1/Pod/default/client, name: client, namespace: default, serviceAccount: client, workloadIps: [198.18.1.2], protocol: HBONE, node: node-1}
- {uid: demo//v1/Pod/default/denied, name: denied, namespace: default, serviceAccount: denied, workloadIps: [198.18.1.3], protocol: HBONE, node: node-1}
- {uid: demo//v1/Pod/default/legacy, name: legacy, namespace: default, serviceAccount: legacy, workloadIps: [198.18.1.4], protocol: TCP, node: node-1}
- {uid: demo//v1/Pod/default/web, name: web, namespace: default, serviceAccount: web, workloadIps: [198.18.2.2], protocol: HBONE, node: node-2}
- {uid: demo//v1/Pod/default/iperf, name: iperf, namespace: default, serviceAccount: iperf, workloadIps: [198.18.2.3], protocol: HBONE, node: node-2}
- {uid: demo//v1/Pod/default/neighbour, name: neighbour, namespace: default, serviceAccount: neighbour, workloadIps: [198.18.2.4], protocol: HBONE, node: node-2}
policies:
- name: deny-denied
  namespace: default
  scope: Namespace
  action: Deny
  rules:
  - - - principals: [!Exact cluster.local/ns/default/sa/denied]
"#;

/// (node, name, the address the mesh config expects it to get).
const PODS: [(u8, &str, &str); 6] = [
    (1, "client", "198.18.1.2"),
    (1, "denied", "198.18.1.3"),
    (1, "legacy", "198.18.1.4"),
    (2, "web", "198.18.2.2"),
    (2, "iperf", "198.18.2.3"),
    (2, "neighbour", "198.18.2.4"),
];

/// Options of `cargo xtask demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Leave the cluster up after the report, print how to reach each node and pod, and tear
    /// it down when Enter (or Ctrl-C) is pressed.
    #[arg(long)]
    keep: bool,
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    interrupt::install_sigint_flag()?;
    setup::run()?;
    interrupt::check()?;
    let root = workspace_root();
    let cargo = cargo();
    eprintln!("demo: building the ztunnel binary");
    run_checked(Command::new(&cargo).current_dir(&root).args([
        "build",
        "--package",
        "ztunnel-user",
    ]))?;
    let target = env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), Into::into);
    let binary = target.join("debug/ztunnel");
    anyhow::ensure!(
        binary.exists(),
        "the build produced no {}",
        binary.display()
    );
    // SAFETY: no other thread exists yet, so nothing reads the environment concurrently.
    unsafe { env::set_var("ZTUNNEL_BIN", &binary) };

    // The logs of the last run stay here after teardown.
    let logs = target.join("demo");
    if logs.exists() {
        std::fs::remove_dir_all(&logs)
            .with_context(|| format!("cannot clear {}", logs.display()))?;
    }
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let detail_log = logs.join("harness.log");
    let console = Arc::new(Console::divert_stdout(&detail_log)?);
    console.line(&format!(
        "demo: setup and build done in {:.0?}; harness detail goes to {}",
        started.elapsed(),
        detail_log.display()
    ));
    let body_console = Arc::clone(&console);
    let options = Options {
        keep: args.keep,
        binary,
        logs: logs.clone(),
    };
    let body = std::thread::spawn(move || demo(&body_console, &options));
    let mut told = false;
    while !body.is_finished() {
        if interrupt::interrupted() && !told {
            console
                .line("demo: Ctrl-C — stopping after the current step and tearing everything down");
            told = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let result = match body.join() {
        Ok(result) => result,
        Err(_) => Err(anyhow::anyhow!(
            "the demo panicked (see {})",
            detail_log.display()
        )),
    };
    console.line(&format!(
        "demo: torn down; `ip netns list` has {} namespaces of this run; total {:.1?}; \
         logs of this run in {}",
        leftover_namespaces(),
        started.elapsed(),
        logs.display()
    ));
    drop(console);
    let failures = result?;
    anyhow::ensure!(
        failures.is_empty(),
        "{} flow(s) misbehaved:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    eprintln!("demo: every flow behaved as expected");
    Ok(())
}

fn leftover_namespaces() -> usize {
    let prefix = format!("zte{}x", std::process::id());
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with(&prefix))
                .count()
        })
        .unwrap_or(0)
}

/// A numbered progress line per step.
struct Progress<'a> {
    console: &'a Console,
    step: usize,
    started: Instant,
}

impl Progress<'_> {
    fn step(&mut self, what: &str) -> anyhow::Result<()> {
        interrupt::check()?;
        self.step += 1;
        self.console.line(&format!(
            "[{:>2}] {:>5.1}s  {what}",
            self.step,
            self.started.elapsed().as_secs_f32()
        ));
        Ok(())
    }
}

/// What the demo body needs from `run`.
struct Options {
    keep: bool,
    binary: std::path::PathBuf,
    logs: std::path::PathBuf,
}

/// Builds the cluster, sends the traffic, shows the result; returns the flows that misbehaved.
/// The cluster (and with it every namespace, process, cgroup and mount) is dropped on return,
/// after its ztunnel logs are copied to `options.logs`.
fn demo(console: &Console, options: &Options) -> anyhow::Result<Vec<String>> {
    let mut progress = Progress {
        console,
        step: 0,
        started: Instant::now(),
    };
    progress.step("creating 2 nodes on an underlay bridge (198.18.0.1, 198.18.0.2)")?;
    let mut cluster = Cluster::new("demo", 2, MESH)?;
    // Declared after the cluster, so dropped (logs copied) before it, also on an early return.
    let mut saved_logs = keep::SaveLogs::new(&cluster, &options.logs);
    for node in 1..=2 {
        progress.step(&format!("starting ztunnel on node {node}"))?;
        cluster.node_mut(node).start_ztunnel(&[])?;
    }
    let mut pods: BTreeMap<&str, ClusterPod> = BTreeMap::new();
    for (node, name, expected) in PODS {
        progress.step(&format!(
            "creating pod default/{name} on node {node} through the CNI chain"
        ))?;
        let pod = cluster.pod(node, "default", name)?;
        anyhow::ensure!(
            pod.ip.to_string() == expected,
            "pod {name} got {} from host-local, but the mesh config expects {expected}",
            pod.ip
        );
        pods.insert(name, pod);
    }
    progress.step("starting nginx in web and legacy, iperf3 -s in iperf")?;
    let web = Nginx::start(&cluster, &pods["web"], "hello from web\n")?;
    let legacy = Nginx::start(&cluster, &pods["legacy"], "hello from legacy\n")?;
    let iperf = Iperf3Server::start(&cluster, &pods["iperf"])?;

    let flows = traffic::flows();
    let mut verdicts = Vec::new();
    let mut failures = Vec::new();
    for flow in &flows {
        progress.step(&flow.describe())?;
        let outcome = traffic::send(&cluster, &pods, flow)?;
        console.line(&format!("       -> {}", outcome.summary));
        let mark = if outcome.as_expected { "ok  " } else { "FAIL" };
        verdicts.push(format!("{mark} {}", flow.describe()));
        if !outcome.as_expected {
            failures.push(format!("{}: {}", flow.describe(), outcome.summary));
        }
    }
    // The destination sees the real client address, not a ztunnel's.
    let client_ip = pods["client"].ip.to_string();
    let source_kept = web.clients().contains(&client_ip);
    let mark = if source_kept { "ok  " } else { "FAIL" };
    verdicts.push(format!(
        "{mark} nginx in web logged client's own address {client_ip}"
    ));
    if !source_kept {
        failures.push(format!(
            "nginx in web did not see {client_ip}: {:?}",
            web.clients()
        ));
    }

    progress.step("waiting for both ztunnels to log every flow")?;
    let records = traffic::wait_for_access_records(&cluster, &pods, &flows, &mut failures);
    let names: BTreeMap<String, String> = pods
        .values()
        .map(|pod| (pod.ip.to_string(), pod.name.clone()))
        .collect();
    show(console, &cluster, &records, &names, &web)?;
    console.line("== Expected behaviour ==");
    for verdict in &verdicts {
        console.line(verdict);
    }
    for failure in failures.iter().filter(|f| f.contains("access-log")) {
        console.line(&format!("FAIL {failure}"));
    }
    if options.keep {
        for line in keep::how_to_reach(&cluster, &pods, &options.binary) {
            console.line(&line);
        }
        keep::wait_for_enter_or_ctrl_c();
        console.line("tearing down (CNI DEL of every pod, ztunnels, namespaces, cgroups, bpffs)");
    } else {
        progress
            .step("tearing down (CNI DEL of every pod, ztunnels, namespaces, cgroups, bpffs)")?;
    }
    saved_logs.save();
    drop((web, legacy, iperf));
    drop(pods);
    drop(cluster);
    Ok(failures)
}

fn show(
    console: &Console,
    cluster: &Cluster,
    records: &[report::AccessRecord],
    names: &BTreeMap<String, String>,
    web: &Nginx,
) -> anyhow::Result<()> {
    console.line("\n== Flows (from the access logs of both ztunnels) ==");
    for line in report::flow_table(records, names) {
        console.line(&line);
    }
    let clients: Vec<String> = web
        .clients()
        .iter()
        .map(|ip| {
            names
                .get(ip)
                .map_or(ip.clone(), |name| format!("{name} ({ip})"))
        })
        .collect();
    console.line(&format!("nginx in web saw clients: {}", clients.join(", ")));
    for node in cluster.nodes.iter() {
        console.line(&format!(
            "\n== ztunnel inspect pods (node {}) ==",
            node.index
        ));
        console.line(node.ztunnel_cli(&["inspect", "pods"])?.trim_end());
    }
    let node = cluster.node(1);
    let map = node.bpffs_root.join("workloads");
    console.line(&format!(
        "\n== bpftool map dump pinned {} (node 1) ==",
        map.display()
    ));
    let dump = crate::command::output(
        Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(&map),
    )?;
    console.line(String::from_utf8_lossy(&dump.stdout).trim_end());
    if !dump.status.success() {
        console.line(&format!(
            "bpftool failed ({}): {}",
            dump.status,
            String::from_utf8_lossy(&dump.stderr).trim()
        ));
    }
    console.line(
        "(bpftool prints the key's address as its 16 bytes, an IPv4 address in the first four; \
         `ztunnel inspect workloads` decodes them:)",
    );
    console.line(node.ztunnel_cli(&["inspect", "workloads"])?.trim_end());
    for node in cluster.nodes.iter() {
        console.line(&format!(
            "\n== istio_tcp_* metrics (node {}, :15020/metrics; labels abridged) ==",
            node.index
        ));
        let page = node.run(&[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "http://127.0.0.1:15020/metrics",
        ])?;
        let page = String::from_utf8_lossy(&page.stdout);
        let excerpt = report::metrics_excerpt(&page);
        if excerpt.is_empty() {
            console.line("(no istio_tcp_* samples)");
        }
        for line in excerpt {
            console.line(&line);
        }
        if let Some(sample) = report::full_sample(&page, "istio_tcp_connections_failed_total") {
            console.line(&format!("one sample in full:\n{sample}"));
        }
    }
    console.line("");
    Ok(())
}
