//! Real programs the cluster tests run as applications and observers: nginx as a pod's web
//! server (with an access log that records the client address it saw), iperf3, and tcpdump on
//! the underlay to prove what crosses between nodes.

use std::{net::Ipv4Addr, path::PathBuf, process::Command};

use anyhow::Context;

use crate::{
    cluster::{Cluster, ClusterPod},
    env::checked,
    process::Process,
    wait::{DEFAULT_TIMEOUT, wait_until},
};

/// nginx serving a fixed page on `<pod ip>:80` inside a pod.
pub struct Nginx {
    /// The access log: one line per request, starting with the client address nginx saw.
    pub access_log: PathBuf,
    /// The page it serves.
    pub page: String,
    process: Process,
}

impl Nginx {
    /// Starts nginx in `pod` (foreground, its own config and paths under the scratch dir).
    pub fn start(cluster: &Cluster, pod: &ClusterPod, page: &str) -> anyhow::Result<Self> {
        let dir = cluster.env.scratch.join(format!("nginx-{}", pod.name));
        std::fs::create_dir_all(dir.join("html"))?;
        std::fs::write(dir.join("html/index.html"), page)?;
        let access_log = dir.join("access.log");
        // One process (no master/worker split), so killing it by PID leaves nothing behind.
        let config = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log {log} combined;\n  client_body_temp_path {dir}/tmp;\n  proxy_temp_path {dir}/tmp;\n  \
             fastcgi_temp_path {dir}/tmp;\n  uwsgi_temp_path {dir}/tmp;\n  scgi_temp_path {dir}/tmp;\n  \
             server {{ listen {ip}:80; root {dir}/html; }}\n}}\n",
            dir = dir.display(),
            log = access_log.display(),
            ip = pod.ip,
        );
        let config_path = dir.join("nginx.conf");
        std::fs::write(&config_path, config)?;
        std::fs::create_dir_all(dir.join("tmp"))?;
        let config_arg = config_path.display().to_string();
        let process = cluster.spawn_in_pod(pod, "nginx", &["nginx", "-c", &config_arg])?;
        let address = format!("{}:80", pod.ip);
        wait_until(
            &format!("nginx to listen on {address}"),
            DEFAULT_TIMEOUT,
            || listening(pod.netns(), &address).then_some(()),
        )?;
        Ok(Self {
            access_log,
            page: page.to_owned(),
            process,
        })
    }

    /// Client addresses in the access log, in order.
    pub fn clients(&self) -> Vec<String> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .collect()
    }

    /// [`Nginx::clients`] once the access log has at least `count` lines, or as it is when
    /// [`DEFAULT_TIMEOUT`] has passed (the caller asserts on what it gets). nginx writes a
    /// request's line after it has sent the response, so a client can hold its answer before
    /// the line exists: reading right after `curl` returned missed it in one CI run.
    pub fn clients_after(&self, count: usize) -> Vec<String> {
        wait_until(
            &format!("nginx's access log to hold {count} requests"),
            DEFAULT_TIMEOUT,
            || {
                let clients = self.clients();
                (clients.len() >= count).then_some(clients)
            },
        )
        .unwrap_or_else(|_| self.clients())
    }

    /// nginx's PID.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

impl Drop for Nginx {
    /// SIGTERM to the master, which stops its worker and waits for it: a SIGKILL (what
    /// [`Process`] does on drop) would orphan the worker and keep the node's cgroup busy.
    fn drop(&mut self) {
        if self.process.signal(libc::SIGTERM).is_ok() {
            let _ = self.process.wait_exit(DEFAULT_TIMEOUT);
        }
    }
}

/// Whether something in netns `netns` listens on TCP `address` (`ss -Hltn`).
pub fn listening(netns: &str, address: &str) -> bool {
    Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{netns}"))
        .args(["ss", "-Hltn"])
        .output()
        .map(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .any(|line| line.split_whitespace().nth(3) == Some(address))
        })
        .unwrap_or(false)
}

/// `iperf3 -s` bound to the pod's address.
pub struct Iperf3Server {
    _process: Process,
    /// Where it listens.
    pub address: Ipv4Addr,
}

impl Iperf3Server {
    /// Starts an iperf3 server in `pod` on port 5201.
    pub fn start(cluster: &Cluster, pod: &ClusterPod) -> anyhow::Result<Self> {
        let bind = pod.ip.to_string();
        let process =
            cluster.spawn_in_pod(pod, "iperf3-server", &["iperf3", "-s", "-B", &bind, "-1"])?;
        let address = format!("{bind}:5201");
        wait_until(
            &format!("iperf3 to listen on {address}"),
            DEFAULT_TIMEOUT,
            || listening(pod.netns(), &address).then_some(()),
        )?;
        Ok(Self {
            _process: process,
            address: pod.ip,
        })
    }
}

/// A packet capture on the underlay bridge, written to a pcap file.
pub struct UnderlayCapture {
    process: Process,
    /// The pcap file.
    pub pcap: PathBuf,
}

impl UnderlayCapture {
    /// Starts `tcpdump` on every interface of the underlay (the bridge's ports: a bridge's own
    /// interface does not see frames it forwards between ports) for TCP; waits until it is
    /// capturing.
    pub fn start(cluster: &Cluster) -> anyhow::Result<Self> {
        let pcap = cluster.env.scratch.join("underlay.pcap");
        let file = pcap.display().to_string();
        let process = cluster.spawn_on_underlay(
            "tcpdump",
            &[
                "tcpdump",
                "-i",
                "any",
                "--immediate-mode",
                // A 32 MiB buffer: a capture that drops packets would prove nothing.
                "-B",
                "32768",
                "-U",
                "-n",
                "-s",
                "0",
                "-w",
                &file,
                "tcp",
            ],
        )?;
        let log = cluster.env.scratch.join("underlay-tcpdump.log");
        wait_until("tcpdump to start capturing", DEFAULT_TIMEOUT, || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|text| text.contains("listening on"))
                .map(|_| ())
        })?;
        Ok(Self { process, pcap })
    }

    /// Stops the capture (SIGINT flushes the file) and returns the raw pcap bytes.
    pub fn finish(mut self) -> anyhow::Result<Vec<u8>> {
        self.process.signal(libc::SIGINT)?;
        self.process.wait_exit(DEFAULT_TIMEOUT)?;
        println!(
            "tcpdump on the underlay: {}",
            self.process.log_text().trim().replace('\n', "; ")
        );
        std::fs::read(&self.pcap).with_context(|| format!("cannot read {}", self.pcap.display()))
    }

    /// `tcpdump -r` of the capture with a filter: one line per matching packet.
    pub fn read(pcap: &std::path::Path, filter: &str) -> anyhow::Result<Vec<String>> {
        let text = checked(
            Command::new("tcpdump")
                .args(["-n", "-r"])
                .arg(pcap)
                .arg(filter),
        )?;
        Ok(text.lines().map(str::to_owned).collect())
    }
}
