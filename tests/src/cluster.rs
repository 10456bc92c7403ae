//! A cluster on one kernel: N nodes joined by an underlay bridge, each with its own ztunnel
//! (own cgroup, own bpffs root, own run dir, running inside the node's netns), and pods created
//! the way a container runtime creates them: a fresh netns wired to its node by the real `ptp`
//! and `host-local` plugins from `/usr/lib/cni`, with `ztunnel-cni` chained last.
//!
//! Addresses: node *i* is 198.18.0.*i* on the underlay and owns pod subnet 198.18.*i*.0/24.
//! Every namespace only has routes inside 198.18.0.0/15, so nothing can leave. A dual-stack
//! cluster ([`Cluster::new_dual_stack`]) adds IPv6 from the documentation range: node *i* is
//! 2001:db8::*i* on the underlay and owns 2001:db8:*i*::/64, routes only inside 2001:db8::/32.
//! Everything is
//! torn down in `Drop` (pods first: CNI `DEL`, then their netns; then ztunnels, nodes, the
//! underlay, the cgroups and the bpffs mount).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use serde_json::{Value, json};

use crate::{
    TestEnv,
    cni_runtime::{CniRuntime, PodFamily, PodSandbox, ptp_conflist_families, result_addresses},
    env::checked,
    net::Netns,
    process::{self, Process},
    wait::{DEFAULT_TIMEOUT, wait_until},
    ztunnel::binary,
};

/// The whole simulated cluster range: the only destination any namespace has a route to.
pub const CLUSTER_RANGE: &str = "198.18.0.0/15";
/// The IPv6 cluster range of a dual-stack cluster (documentation space).
pub const CLUSTER_RANGE_V6: &str = "2001:db8::/32";

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
    dual_stack: bool,
}

/// One simulated node.
pub struct ClusterNode {
    daemon: Option<Process>,
    /// A second ztunnel started beside `daemon` (an upgrade), until it takes over.
    successor: Option<Process>,
    /// 1-based index.
    pub index: u8,
    /// The node's network namespace (ztunnel runs here).
    pub netns: Netns,
    /// Its underlay address.
    pub underlay_ip: Ipv4Addr,
    /// Its IPv6 underlay address (dual-stack clusters only).
    pub underlay_ipv6: Option<Ipv6Addr>,
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
    /// The `RUST_LOG` filter its ztunnels start with (e.g. to see debug events of one
    /// module); `None` keeps the test's own environment.
    pub log_filter: Option<String>,
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
    /// Its IPv6 address, from the CNI result (dual-stack clusters only).
    pub ipv6: Option<Ipv6Addr>,
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
        Self::build(test, nodes, mesh_config, false)
    }

    /// Like [`Cluster::new`], with IPv6 too: underlay addresses 2001:db8::*i*, pod subnets
    /// 2001:db8:*i*::/64 as a second host-local range, so every pod gets one address per family.
    pub fn new_dual_stack(test: &str, nodes: u8, mesh_config: &str) -> anyhow::Result<Self> {
        Self::build(test, nodes, mesh_config, true)
    }

    fn build(test: &str, nodes: u8, mesh_config: &str, dual_stack: bool) -> anyhow::Result<Self> {
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
            dual_stack,
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
                if let Some(gateway) = other.underlay_ipv6 {
                    node.netns.ip(&[
                        "-6",
                        "route",
                        "add",
                        &format!("2001:db8:{}::/64", other.index),
                        "via",
                        &gateway.to_string(),
                    ])?;
                }
            }
        }
        println!(
            "[{test}] cluster {}: {} nodes on underlay {}{}, mesh config {}",
            cluster.env.prefix,
            nodes,
            cluster.underlay.name,
            if dual_stack { " (dual stack)" } else { "" },
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
        let underlay_ipv6 = if self.dual_stack {
            let address = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(index));
            // nodad: usable at once, no duplicate-address wait on a bridge we own.
            netns.ip(&[
                "addr",
                "add",
                &format!("{address}/64"),
                "dev",
                "ul0",
                "nodad",
            ])?;
            sysctl(&netns.name, "net.ipv6.conf.all.forwarding", "1")?;
            // ptp puts the pod gateway on every host-side veth; without this, duplicate address
            // detection keeps it tentative for a second and a new pod's first packets wait for it.
            sysctl(&netns.name, "net.ipv6.conf.default.accept_dad", "0")?;
            Some(address)
        } else {
            None
        };

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
        let (subnet, gateway) = (format!("198.18.{index}.0/24"), format!("198.18.{index}.1"));
        let (subnet_v6, gateway_v6) = (
            format!("2001:db8:{index}::/64"),
            format!("2001:db8:{index}::1"),
        );
        let mut families = vec![PodFamily {
            subnet: &subnet,
            gateway: &gateway,
            cluster_range: CLUSTER_RANGE,
        }];
        if self.dual_stack {
            families.push(PodFamily {
                subnet: &subnet_v6,
                gateway: &gateway_v6,
                cluster_range: CLUSTER_RANGE_V6,
            });
        }
        let conflist = ptp_conflist_families(
            &format!("{}-net", self.env.prefix),
            &families,
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
            successor: None,
            index,
            netns,
            underlay_ip,
            underlay_ipv6,
            cgroup,
            bpffs_root,
            run_dir,
            log: node_dir.join("ztunnel.log"),
            ca_dir: crate::ztunnel::mesh_root(&self.env.scratch)?,
            mesh_config: self.mesh_config.clone(),
            log_filter: None,
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
        let result = match self.cni.add(&sandbox) {
            Ok(result) => result,
            Err(error) => {
                // As a runtime does after a failed ADD: DEL, so the chain releases what it took.
                if let Err(cleanup) = self.cni.del(&sandbox, None) {
                    eprintln!("CNI DEL after the failed ADD of {namespace}/{name}: {cleanup:#}");
                }
                return Err(error.context(format!(
                    "CNI ADD of pod {namespace}/{name} on node {}",
                    self.index
                )));
            }
        };
        let addresses = result_addresses(&result);
        let ip = addresses
            .iter()
            .find_map(|address| match address {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .with_context(|| format!("the CNI result has no IPv4 address: {result}"))?;
        let ipv6 = addresses.iter().find_map(|address| match address {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        });
        if self.underlay_ipv6.is_some() {
            anyhow::ensure!(
                ipv6.is_some(),
                "dual-stack node {}: the CNI result has no IPv6 address: {result}",
                self.index
            );
        }
        println!(
            "pod {namespace}/{name} on node {}: netns {}, ip {ip}{}",
            self.index,
            netns.name,
            ipv6.map(|v6| format!(", ipv6 {v6}")).unwrap_or_default()
        );
        Ok(ClusterPod {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            ip,
            ipv6,
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
    /// and waits until it logs that it is ready. It issues certificates from the cluster's mesh
    /// root (`--ca-dir`) unless `extra` gives it `--cert-dir` or `--ca-address`.
    pub fn start_ztunnel(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        self.start_ztunnel_with_open_files(extra, None)
    }

    /// Like [`start_ztunnel`](Self::start_ztunnel), with `RLIMIT_NOFILE` set to `open_files`
    /// (through `prlimit`, as a DaemonSet's container runtime would set it; capped at the hard
    /// limit this process can grant).
    pub fn start_ztunnel_with_open_files(
        &mut self,
        extra: &[&str],
        open_files: Option<u64>,
    ) -> anyhow::Result<()> {
        let offset = self.launch_ztunnel(extra, open_files)?;
        self.wait_for_log("ztunnel to be ready", offset, &["ztunnel daemon ready"])?;
        Ok(())
    }

    /// Starts this node's ztunnel like [`ClusterNode::start_ztunnel`] without waiting for it;
    /// returns the log offset its lines start at (for [`ClusterNode::wait_for_log`]).
    pub fn start_ztunnel_without_waiting(&mut self, extra: &[&str]) -> anyhow::Result<u64> {
        self.launch_ztunnel(extra, None)
    }

    fn launch_ztunnel(&mut self, extra: &[&str], open_files: Option<u64>) -> anyhow::Result<u64> {
        anyhow::ensure!(
            self.daemon.is_none(),
            "node {}'s ztunnel is already running",
            self.index
        );
        let (process, offset) = self.spawn_ztunnel("ztunnel", extra, open_files)?;
        self.daemon = Some(process);
        Ok(offset)
    }

    /// Starts a second ztunnel beside the running one, as an upgrade's surge pod does
    /// (`--takeover`, same run dir, bpffs root and cgroup; both log to [`Self::log`]), and waits
    /// until it stands by, serving every enrolled pod beside the running one.
    pub fn start_successor(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.daemon.is_some() && self.successor.is_none(),
            "node {}: a successor needs a running ztunnel and no other successor",
            self.index
        );
        let mut flags = vec!["--takeover"];
        flags.extend_from_slice(extra);
        let (process, offset) = self.spawn_ztunnel("ztunnel successor", &flags, None)?;
        self.successor = Some(process);
        self.wait_for_log(
            "the successor to stand by",
            offset,
            &["ztunnel daemon standing by"],
        )?;
        Ok(())
    }

    /// Ends an upgrade: SIGTERMs (and SIGCONTs) the running ztunnel (it closes its listeners and drains), waits
    /// until the successor has taken over and is ready, then until the old one has exited. The
    /// successor is this node's ztunnel afterwards. Returns the old one's exit status.
    pub fn retire_ztunnel(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        anyhow::ensure!(
            self.successor.is_some(),
            "node {}: no successor to hand over to",
            self.index
        );
        let mut old = self
            .daemon
            .take()
            .with_context(|| format!("node {}: no running ztunnel to retire", self.index))?;
        let offset = std::fs::metadata(&self.log)
            .map(|meta| meta.len())
            .unwrap_or(0);
        old.signal(libc::SIGTERM)?;
        // In case the test paused it (SIGSTOP): the SIGTERM is acted on once it runs again.
        old.signal(libc::SIGCONT)?;
        self.daemon = self.successor.take();
        self.wait_for_log("the successor to take over", offset, &["taking over"])?;
        self.wait_for_log(
            "the successor to be ready",
            offset,
            &["ztunnel daemon ready"],
        )?;
        old.wait_exit(Duration::from_secs(40))
    }

    /// Sends `signal` to this node's running ztunnel (e.g. SIGSTOP to make it stall, as an
    /// overloaded daemon does, while its listeners keep queueing connections).
    pub fn signal_ztunnel(&self, signal: libc::c_int) -> anyhow::Result<()> {
        self.daemon
            .as_ref()
            .with_context(|| format!("node {}'s ztunnel is not running", self.index))?
            .signal(signal)
    }

    /// Spawns `ztunnel daemon` for this node with `extra` flags (and `RLIMIT_NOFILE` set to
    /// `open_files` when given); returns it and the log offset its lines start after.
    fn spawn_ztunnel(
        &self,
        what: &str,
        extra: &[&str],
        open_files: Option<u64>,
    ) -> anyhow::Result<(Process, u64)> {
        let binary = binary()?;
        let mut argv: Vec<String> = Vec::new();
        if let Some(wanted) = open_files {
            let (prefix, soft) = process::open_files_prefix(wanted)?;
            println!(
                "node {}: ztunnel RLIMIT_NOFILE {soft} (wanted {wanted})",
                self.index
            );
            argv.extend(prefix);
        }
        if let Some(filter) = &self.log_filter {
            argv.extend(["env".into(), format!("RUST_LOG={filter}")]);
        }
        argv.extend([
            binary.display().to_string(),
            "daemon".into(),
            "--bpffs-root".into(),
            self.bpffs_root.display().to_string(),
            "--run-dir".into(),
            self.run_dir.display().to_string(),
            "--cgroup".into(),
            self.cgroup.display().to_string(),
        ]);
        // A ztunnel fed by xDS reads no file (the CNI plugin still does, to pick mesh pods).
        if !extra.contains(&"--xds-address") {
            argv.extend(["--config".into(), self.mesh_config.display().to_string()]);
        }
        // Certificates come from the mesh root unless the test hands the node certificate files
        // or points it at an Istio CA.
        if !extra.contains(&"--cert-dir") && !extra.contains(&"--ca-address") {
            argv.extend(["--ca-dir".into(), self.ca_dir.display().to_string()]);
        }
        argv.extend(extra.iter().map(|arg| arg.to_string()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let procs = self.cgroup.join("cgroup.procs");
        let offset = std::fs::metadata(&self.log)
            .map(|meta| meta.len())
            .unwrap_or(0);
        let process = Process::spawn(
            &format!("{what} node {}", self.index),
            Some(&procs),
            Some(&self.netns.name),
            &argv,
            self.log.clone(),
        )?;
        Ok((process, offset))
    }

    /// The PID of this node's running ztunnel (for CPU and memory figures).
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
        drop(self.successor.take());
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

/// The time at the start of a ztunnel log line (`2026-01-02T03:04:05.678901Z  INFO ...`).
pub fn log_line_time(line: &str) -> Option<std::time::SystemTime> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut date_parts = date.splitn(3, '-').map(str::parse::<i64>);
    let (year, month, day) = (
        date_parts.next()?.ok()?,
        date_parts.next()?.ok()?,
        date_parts.next()?.ok()?,
    );
    let (clock, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut clock_parts = clock.splitn(3, ':').map(str::parse::<i64>);
    let (hour, minute, second) = (
        clock_parts.next()?.ok()?,
        clock_parts.next()?.ok()?,
        clock_parts.next()?.ok()?,
    );
    let nanos: u32 = format!("{fraction:0<9}").get(..9)?.parse().ok()?;
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let shifted_year = if month <= 2 { year - 1 } else { year };
    let era = shifted_year.div_euclid(400);
    let year_of_era = shifted_year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(
        std::time::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(seconds).ok()?)
            + Duration::from_nanos(u64::from(nanos)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_line_times_are_read() {
        let time = log_line_time("2026-11-27T00:07:25.024818Z  INFO ztunnel: ready").unwrap();
        let since = time.duration_since(std::time::UNIX_EPOCH).unwrap();
        assert_eq!(since.as_secs(), 1_795_738_045);
        assert_eq!(since.subsec_micros(), 24_818);
        assert!(log_line_time("garbage").is_none());
    }
}
