//! Waypoint replicas for the cluster harness: `ztunnel waypoint` started inside a pod that the
//! CNI chain created but did not enroll (the mesh config lists it with `protocol: TCP`, as a
//! waypoint pod is not captured), with the mesh root and config every node uses.

use std::time::Duration;

use anyhow::Context;

use crate::{
    cluster::{Cluster, ClusterPod},
    process::Process,
    wait::{DEFAULT_TIMEOUT, wait_until},
    ztunnel::binary,
};

/// One running waypoint replica.
pub struct WaypointReplica {
    process: Option<Process>,
    /// The pod it runs in.
    pub pod_name: String,
    /// The pod's address (HBONE on port 15008).
    pub ip: std::net::Ipv4Addr,
}

impl WaypointReplica {
    /// Starts `ztunnel waypoint` in `pod` as `namespace/service_account` and waits until it is
    /// ready. Its admin servers use Istio's ports inside the pod's netns.
    pub fn start(
        cluster: &Cluster,
        pod: &ClusterPod,
        namespace: &str,
        service_account: &str,
    ) -> anyhow::Result<Self> {
        let binary = binary()?.display().to_string();
        let node = cluster.node(pod.node);
        let ca_dir = node.ca_dir.display().to_string();
        let config = cluster.mesh_config.display().to_string();
        let argv = [
            binary.as_str(),
            "waypoint",
            "--namespace",
            namespace,
            "--service-account",
            service_account,
            "--ca-dir",
            &ca_dir,
            "--config",
            &config,
        ];
        let process = cluster.spawn_in_pod(pod, "waypoint", &argv)?;
        wait_until(
            &format!("waypoint in pod {} to be ready", pod.name),
            DEFAULT_TIMEOUT,
            || {
                process
                    .log_text()
                    .contains("ztunnel waypoint ready")
                    .then_some(())
            },
        )
        .with_context(|| format!("waypoint log:\n{}", process.log_text()))?;
        Ok(Self {
            process: Some(process),
            pod_name: pod.name.clone(),
            ip: pod.ip,
        })
    }

    /// Everything the replica logged.
    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .map(Process::log_text)
            .unwrap_or_default()
    }

    /// Its access-log lines.
    pub fn access_log(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| line.contains("ztunnel::access"))
            .map(str::to_owned)
            .collect()
    }

    /// SIGKILLs it (a crash) and waits until it is gone; its log stays readable.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(process) = self.process.as_mut() {
            process.signal(libc::SIGKILL)?;
            process.wait_exit(Duration::from_secs(10))?;
        }
        Ok(())
    }
}
