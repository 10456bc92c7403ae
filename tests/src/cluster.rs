//! A cluster on one kernel: N nodes joined by an underlay bridge, each with its own ztunnel
//! (own cgroup, own bpffs root, own run dir, running inside the node's netns), and pods created
//! the way a container runtime creates them: a fresh netns wired to its node by the real `ptp`
//! and `host-local` plugins from `/usr/lib/cni`, with `ztunnel-cni` chained last.
//!
//! Addresses: node *i* is 198.18.0.*i* on the underlay and owns pod subnet 198.18.*i*.0/24.
//! Every namespace only has routes inside 198.18.0.0/15, so nothing can leave. Everything is
//! torn down in `Drop` (pods first: CNI `DEL`, then their netns; then ztunnels, nodes, the
//! underlay, the cgroups and the bpffs mount).

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use serde_json::{Value, json};

use crate::{
    TestEnv,
    cni_runtime::{CniRuntime, PodSandbox, ptp_conflist, result_addresses},
    env::checked,
    net::Netns,
    process::{self, Process},
    wait::{DEFAULT_TIMEOUT, wait_until},
    ztunnel::binary,
};

/// The whole simulated cluster range: the only destination any namespace has a route to.
pub const CLUSTER_RANGE: &str = "198.18.0.0/15";

/// A simulated cluster. Drop order is field order: nodes (and their daemons), then the
/// underlay, then the environment (cgroup, bpffs, scratch).
pub struct Cluster {
    /// The nodes, index 1..=N.
    pub nodes: Vec<ClusterNode>,
    underlay: Netns,
    /// Prefix, scratch dir, test cgroup and bpffs mount.
    pub env: TestEnv,
    /// The workload config file every ztunnel and CNI plugin reads.
    pub mesh_config: PathBuf,
}

/// One simulated node.
pub struct ClusterNode {
    daemon: Option<Process>,
    /// 1-based index.
    pub index: u8,
    /// The node's network namespace (ztunnel runs here).
    pub netns: Netns,
    /// Its underlay address.
    pub underlay_ip: Ipv4Addr,
    /// Its cgroup (the connect hooks attach here; the node's processes live here).
    pub cgroup: PathBuf,
    /// Its ztunnel's bpffs pin root.
    pub bpffs_root: PathBuf,
    /// Its ztunnel's run dir (enrollment socket, enrolled set).
    pub run_dir: PathBuf,
    /// Where its ztunnel writes its log.
    pub log: PathBuf,
    /// The mesh root every node's ztunnel issues workload certificates from.
    pub ca_dir: PathBuf,
    /// The workload config (shared by the cluster).
    pub mesh_config: PathBuf,
    cni: CniRuntime,
}

/// A pod created through the CNI chain. Drop runs CNI `DEL`, then deletes the netns.
pub struct ClusterPod {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Its address, from the CNI result.
    pub ip: Ipv4Addr,
    /// The node it runs on (1-based).
    pub node: u8,
    /// The result the chain returned for ADD.
    pub cni_result: Value,
    sandbox: PodSandbox,
    cni: CniRuntime,
    cgroup_procs: PathBuf,
    deleted: bool,
    netns: Netns,
}

impl Cluster {
    /// Creates `nodes` nodes on an underlay, with `mesh_config` (YAML) as the workload config.
    pub fn new(test: &str, nodes: u8, mesh_config: &str) -> anyhow::Result<Self> {
        let env = TestEnv::new(test)?;
        let mesh_config_path = env.scratch.join("mesh.yaml");
        std::fs::write(&mesh_config_path, mesh_config).context("cannot write the mesh config")?;
        let plugin_dir = env.scratch.join("cni-bin");
        std::fs::create_dir_all(&plugin_dir)?;
        std::os::unix::fs::symlink(binary()?, plugin_dir.join("ztunnel-cni"))
            .context("cannot place ztunnel-cni in the plugin dir")?;

        let underlay = Netns::create(&format!("{}-ul", env.prefix))?;
        underlay.ip(&["link", "add", "br0", "type", "bridge"])?;
        underlay.ip(&["link", "set", "br0", "up"])?;
        let mut cluster = Self {
            nodes: Vec::new(),
            underlay,
            env,
            mesh_config: mesh_config_path,
        };
        for index in 1..=nodes {
            let node = cluster.create_node(index, &plugin_dir)?;
            cluster.nodes.push(node);
        }
        // Each node routes the other nodes' pod subnets through their underlay address.
        for node in &cluster.nodes {
            for other in cluster
                .nodes
                .iter()
                .filter(|other| other.index != node.index)
            {
                node.netns.ip(&[
                    "route",
                    "add",
                    &format!("198.18.{}.0/24", other.index),
                    "via",
                    &other.underlay_ip.to_string(),
                ])?;
            }
        }
        println!(
            "[{test}] cluster {}: {} nodes on underlay {}, mesh config {}",
            cluster.env.prefix,
            nodes,
            cluster.underlay.name,
            cluster.mesh_config.display()
        );
        Ok(cluster)
    }

    fn create_node(&self, index: u8, plugin_dir: &Path) -> anyhow::Result<ClusterNode> {
        let name = format!("{}-n{index}", self.env.prefix);
        let netns = Netns::create(&name)?;
        let underlay_ip = Ipv4Addr::new(198, 18, 0, index);
        let link = format!("{}-u{index}", self.env.prefix);
        checked(std::process::Command::new("ip").args([
            "link",
            "add",
            &link,
            "netns",
            &self.underlay.name,
            "type",
            "veth",
            "peer",
            "name",
            "ul0",
            "netns",
            &netns.name,
        ]))?;
        self.underlay
            .ip(&["link", "set", &link, "master", "br0", "up"])?;
        netns.ip(&["addr", "add", &format!("{underlay_ip}/24"), "dev", "ul0"])?;
        netns.ip(&["link", "set", "ul0", "up"])?;
        sysctl(&netns.name, "net.ipv4.ip_forward", "1")?;

        let node_dir = self.env.scratch.join(format!("n{index}"));
        std::fs::create_dir_all(&node_dir)?;
        let cgroup = self.env.cgroup.join(format!("n{index}"));
        std::fs::create_dir(&cgroup)
            .with_context(|| format!("cannot create cgroup {}", cgroup.display()))?;
        let bpffs_root = self.env.bpffs.join(format!("n{index}"));
        let run_dir = node_dir.join("run");
        let ztunnel_section = json!({
            "type": "ztunnel-cni",
            "runDir": run_dir,
            "bpffsRoot": bpffs_root,
            "workloadConfig": self.mesh_config,
            "excludeNamespaces": ["kube-system"],
            "timeoutSeconds": 15,
        });
        let conflist = ptp_conflist(
            &format!("{}-net", self.env.prefix),
            &format!("198.18.{index}.0/24"),
            &format!("198.18.{index}.1"),
            CLUSTER_RANGE,
            &node_dir.join("ipam"),
            &[ztunnel_section],
        );
        let cni = CniRuntime::new(
            conflist,
            vec![plugin_dir.to_owned(), PathBuf::from("/usr/lib/cni")],
            netns.name.clone(),
        )?;
        println!(
            "node {index}: netns {}, underlay {underlay_ip}, cgroup {}, bpffs {}",
            netns.name,
            cgroup.display(),
            bpffs_root.display()
        );
        Ok(ClusterNode {
            daemon: None,
            index,
            netns,
            underlay_ip,
            cgroup,
            bpffs_root,
            run_dir,
            log: node_dir.join("ztunnel.log"),
            ca_dir: crate::ztunnel::mesh_root(&self.env.scratch)?,
            mesh_config: self.mesh_config.clone(),
            cni,
        })
    }

    /// Node `index` (1-based).
    pub fn node(&self, index: u8) -> &ClusterNode {
        &self.nodes[usize::from(index) - 1]
    }

    /// Node `index` (1-based), mutably.
    pub fn node_mut(&mut self, index: u8) -> &mut ClusterNode {
        &mut self.nodes[usize::from(index) - 1]
    }

    /// Creates pod `namespace/name` on node `index` through the CNI chain.
    pub fn pod(&self, index: u8, namespace: &str, name: &str) -> anyhow::Result<ClusterPod> {
        self.node(index)
            .create_pod(&self.env.prefix, namespace, name)
    }

    /// Runs a short-lived command inside `pod` (its netns, its node's cgroup).
    pub fn run_in_pod(
        &self,
        pod: &ClusterPod,
        argv: &[&str],
    ) -> anyhow::Result<std::process::Output> {
        process::run(Some(&pod.cgroup_procs), Some(&pod.netns.name), argv)
    }

    /// Starts a long-running process inside `pod`, logging to the scratch dir.
    pub fn spawn_in_pod(
        &self,
        pod: &ClusterPod,
        what: &str,
        argv: &[&str],
    ) -> anyhow::Result<Process> {
        let log = self.env.scratch.join(format!("{}-{what}.log", pod.name));
        Process::spawn(
            what,
            Some(&pod.cgroup_procs),
            Some(&pod.netns.name),
            argv,
            log,
        )
    }

    /// Runs a command in the underlay's netns (e.g. a capture on its bridge).
    pub fn spawn_on_underlay(&self, what: &str, argv: &[&str]) -> anyhow::Result<Process> {
        let log = self.env.scratch.join(format!("underlay-{what}.log"));
        Process::spawn(what, None, Some(&self.underlay.name), argv, log)
    }

    /// The underlay's netns name.
    pub fn underlay_netns(&self) -> &str {
        &self.underlay.name
    }
}

impl ClusterNode {
    fn create_pod(&self, prefix: &str, namespace: &str, name: &str) -> anyhow::Result<ClusterPod> {
        let netns = Netns::create(&format!("{prefix}-n{}-{name}", self.index))?;
        let sandbox = PodSandbox {
            container_id: format!("{prefix}-{namespace}-{name}"),
            netns_path: PathBuf::from(format!("/var/run/netns/{}", netns.name)),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        };
        let result = self
            .cni
            .add(&sandbox)
            .with_context(|| format!("CNI ADD of pod {namespace}/{name} on node {}", self.index))?;
        let ip = result_addresses(&result)
            .into_iter()
            .find_map(|address| match address {
                std::net::IpAddr::V4(v4) => Some(v4),
                std::net::IpAddr::V6(_) => None,
            })
            .with_context(|| format!("the CNI result has no IPv4 address: {result}"))?;
        println!(
            "pod {namespace}/{name} on node {}: netns {}, ip {ip}",
            self.index, netns.name
        );
        Ok(ClusterPod {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            ip,
            node: self.index,
            cni_result: result,
            sandbox,
            cni: self.cni.clone(),
            cgroup_procs: self.cgroup.join("cgroup.procs"),
            deleted: false,
            netns,
        })
    }

    /// Starts this node's ztunnel (inside the node netns, in the node cgroup) with `extra` flags
    /// and waits until it logs that it is ready.
    pub fn start_ztunnel(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.daemon.is_none(),
            "node {}'s ztunnel is already running",
            self.index
        );
        let binary = binary()?;
        let mut argv: Vec<String> = vec![
            binary.display().to_string(),
            "daemon".into(),
            "--bpffs-root".into(),
            self.bpffs_root.display().to_string(),
            "--run-dir".into(),
            self.run_dir.display().to_string(),
            "--cgroup".into(),
            self.cgroup.display().to_string(),
            "--ca-dir".into(),
            self.ca_dir.display().to_string(),
            "--config".into(),
            self.mesh_config.display().to_string(),
        ];
        argv.extend(extra.iter().map(|arg| arg.to_string()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let procs = self.cgroup.join("cgroup.procs");
        let offset = std::fs::metadata(&self.log)
            .map(|meta| meta.len())
            .unwrap_or(0);
        let process = Process::spawn(
            &format!("ztunnel node {}", self.index),
            Some(&procs),
            Some(&self.netns.name),
            &argv,
            self.log.clone(),
        )?;
        self.daemon = Some(process);
        self.wait_for_log("ztunnel to be ready", offset, &["ztunnel daemon ready"])?;
        Ok(())
    }

    /// The PID of this node's running ztunnel, if it runs.
    pub fn ztunnel_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Process::pid)
    }

    /// Everything this node's ztunnel has logged (across restarts).
    pub fn ztunnel_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until a line written after byte `offset` of the log contains every needle.
    pub fn wait_for_log(
        &self,
        what: &str,
        offset: u64,
        needles: &[&str],
    ) -> anyhow::Result<String> {
        let offset = usize::try_from(offset).unwrap_or(0);
        wait_until(
            &format!("node {}: {what}", self.index),
            DEFAULT_TIMEOUT,
            || {
                let log = self.ztunnel_log();
                log.get(offset..)?
                    .lines()
                    .find(|line| needles.iter().all(|needle| line.contains(needle)))
                    .map(str::to_owned)
            },
        )
        .map_err(|error| {
            error.context(format!(
                "node {} ztunnel log:\n{}",
                self.index,
                self.ztunnel_log()
            ))
        })
    }

    /// SIGTERM this node's ztunnel and wait for it to exit.
    pub fn stop_ztunnel(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.daemon.take() {
            process.signal(libc::SIGTERM)?;
            process.wait_exit(Duration::from_secs(40))?;
        }
        Ok(())
    }

    /// SIGKILL this node's ztunnel (a crash).
    pub fn kill_ztunnel(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.daemon.take() {
            process.signal(libc::SIGKILL)?;
            process.wait_exit(Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// `ztunnel <args> --bpffs-root <node's> --run-dir <node's>`, from the node's netns.
    pub fn ztunnel_cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let binary = binary()?;
        let output = std::process::Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.netns.name))
            .arg(&binary)
            .args(args)
            .arg("--bpffs-root")
            .arg(&self.bpffs_root)
            .arg("--run-dir")
            .arg(&self.run_dir)
            .output()
            .with_context(|| format!("cannot run ztunnel {args:?}"))?;
        anyhow::ensure!(
            output.status.success(),
            "ztunnel {args:?} on node {} failed: {}",
            self.index,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs a command inside the node's netns.
    pub fn run(&self, argv: &[&str]) -> anyhow::Result<std::process::Output> {
        process::run(None, Some(&self.netns.name), argv)
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        if let Some(process) = self.daemon.take() {
            drop(process);
        }
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

impl ClusterPod {
    /// The netns name.
    pub fn netns(&self) -> &str {
        &self.netns.name
    }

    /// Runs CNI `DEL` now (also done on drop).
    pub fn delete(&mut self) -> anyhow::Result<()> {
        self.deleted = true;
        self.cni.del(&self.sandbox, Some(&self.cni_result))
    }

    /// Runs CNI `CHECK`.
    pub fn check(&self) -> anyhow::Result<()> {
        self.cni.check(&self.sandbox, &self.cni_result)
    }
}

impl Drop for ClusterPod {
    fn drop(&mut self) {
        if !self.deleted
            && let Err(error) = self.cni.del(&self.sandbox, Some(&self.cni_result))
        {
            eprintln!(
                "CNI DEL of {}/{} failed during teardown: {error:#}",
                self.namespace, self.name
            );
        }
    }
}

fn sysctl(netns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    checked(std::process::Command::new("ip").args([
        "netns",
        "exec",
        netns,
        "sysctl",
        "-qw",
        &format!("{key}={value}"),
    ]))?;
    Ok(())
}
