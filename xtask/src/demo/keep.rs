//! What stays after the demo: the ztunnel logs of the last run under `target/demo/`, and with
//! `--keep` the cluster itself until Enter or Ctrl-C, with how to reach each node and pod.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use ztunnel_e2e::cluster::{Cluster, ClusterPod};

use super::interrupt;

/// Copies each node's ztunnel log into the demo's log directory: on [`SaveLogs::save`], or
/// when dropped (an early return) if not saved yet.
pub struct SaveLogs {
    copies: Vec<(PathBuf, PathBuf)>,
    saved: bool,
}

impl SaveLogs {
    pub fn new(cluster: &Cluster, directory: &Path) -> Self {
        let copies = cluster
            .nodes
            .iter()
            .map(|node| {
                let target = directory.join(format!("node-{}-ztunnel.log", node.index));
                (node.log.clone(), target)
            })
            .collect();
        Self {
            copies,
            saved: false,
        }
    }

    /// Copies the logs as they are now.
    pub fn save(&mut self) {
        for (log, target) in &self.copies {
            if let Err(error) = std::fs::copy(log, target) {
                // The console is the terminal; stderr still is too.
                eprintln!(
                    "demo: cannot keep {} as {}: {error}",
                    log.display(),
                    target.display()
                );
            }
        }
        self.saved = true;
    }
}

impl Drop for SaveLogs {
    fn drop(&mut self) {
        if !self.saved {
            self.save();
        }
    }
}

/// How to reach each node and pod of the running cluster, and how to end it.
pub fn how_to_reach(
    cluster: &Cluster,
    pods: &BTreeMap<&str, ClusterPod>,
    binary: &Path,
) -> Vec<String> {
    let mut lines = vec![
        String::new(),
        "== The cluster stays up (--keep) ==".to_owned(),
    ];
    for node in &cluster.nodes {
        let netns = &node.netns.name;
        lines.push(format!(
            "node {} (netns {netns}, underlay {}):",
            node.index, node.underlay_ip
        ));
        lines.push(format!("  ztunnel log   {}", node.log.display()));
        lines.push(format!(
            "  metrics       ip netns exec {netns} curl -s http://127.0.0.1:15020/metrics"
        ));
        lines.push(format!(
            "  config dump   ip netns exec {netns} curl -s http://127.0.0.1:15000/config_dump"
        ));
        lines.push(format!(
            "  maps          {} inspect pods --bpffs-root {} --run-dir {}",
            binary.display(),
            node.bpffs_root.display(),
            node.run_dir.display()
        ));
    }
    lines.push(
        "pods (a shell in the pod's netns and its node's cgroup, so that its traffic is captured):"
            .to_owned(),
    );
    for pod in pods.values() {
        let cgroup = &cluster.node(pod.node).cgroup;
        // The cgroup first: `ip netns exec` mounts a fresh /sys, without the cgroup2 mount.
        lines.push(format!(
            "  {}/{} (node {}, {}): sh -c 'echo $$ > {}/cgroup.procs && exec ip netns exec {} bash'",
            pod.namespace,
            pod.name,
            pod.node,
            pod.ip,
            cgroup.display(),
            pod.netns()
        ));
    }
    lines.push("  e.g. in client: curl http://198.18.2.2/   iperf3 -c 198.18.2.3 -t 2".to_owned());
    lines.push(String::new());
    lines.push(
        "Press Enter (or Ctrl-C) to tear everything down; leave the pod shells first.".to_owned(),
    );
    lines
}

/// Returns when a line (or end of file) arrives on standard input, or Ctrl-C was pressed.
pub fn wait_for_enter_or_ctrl_c() {
    let mut pollfd = libc::pollfd {
        fd: libc::STDIN_FILENO,
        events: libc::POLLIN,
        revents: 0,
    };
    while !interrupt::interrupted() {
        // SAFETY: one pollfd we own, for the duration of the call.
        let ready = unsafe { libc::poll(&mut pollfd, 1, 200) };
        if ready > 0 {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            return;
        }
        if ready < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
}
