//! A test control plane standing in for istiod: a delta ADS server (gRPC over TLS, bearer
//! token checked) fed from fixtures in the configuration file's shape, run as its own process
//! (`xds-control-plane`) on the cluster's underlay so that every node's ztunnel reaches it as
//! a real one would. A test pushes by rewriting the fixture, kills it to make istiod go away,
//! and restarts it.
//!
//! Address: 198.18.0.254:15012 on the underlay bridge (the nodes are 198.18.0.*i*).

pub mod resources;
pub mod serve;
pub mod server;
pub mod tls;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;

use crate::{
    cluster::Cluster,
    process::Process,
    wait::{DEFAULT_TIMEOUT, wait_until},
};

/// Where the control plane listens.
pub const CONTROL_PLANE_ADDRESS: &str = "198.18.0.254:15012";
/// The token every ztunnel presents (the stand-in of a projected service-account token).
const TOKEN: &str = "test-projected-service-account-token";

/// The running control plane; killed in `Drop`.
pub struct ControlPlane {
    process: Option<Process>,
    argv: Vec<String>,
    underlay: String,
    /// The fixture the process serves; rewrite it (see [`ControlPlane::push`]) to push.
    pub fixture: PathBuf,
    /// The process's log (pushes, ACKs, NACKs, one per line).
    pub log: PathBuf,
    token_file: PathBuf,
    root_cert: PathBuf,
}

impl ControlPlane {
    /// Starts the control plane on `cluster`'s underlay serving `fixture` (YAML); `binary` is
    /// `env!("CARGO_BIN_EXE_xds-control-plane")`.
    pub fn start(cluster: &Cluster, binary: &Path, fixture: &str) -> anyhow::Result<Self> {
        let listen: SocketAddr = CONTROL_PLANE_ADDRESS.parse()?;
        let underlay = cluster.underlay_netns().to_owned();
        crate::env::checked(std::process::Command::new("ip").args([
            "-n",
            &underlay,
            "addr",
            "add",
            &format!("{}/24", listen.ip()),
            "dev",
            "br0",
        ]))?;
        let scratch = &cluster.env.scratch;
        let fixture_path = scratch.join("xds-fixture.yaml");
        std::fs::write(&fixture_path, fixture)?;
        let token_file = scratch.join("istio-token");
        std::fs::write(&token_file, TOKEN)?;
        let ca_dir = crate::ztunnel::mesh_root(scratch)?;
        let argv = vec![
            binary.display().to_string(),
            "--listen".into(),
            listen.to_string(),
            "--ca-dir".into(),
            ca_dir.display().to_string(),
            "--fixture".into(),
            fixture_path.display().to_string(),
            "--token".into(),
            TOKEN.into(),
        ];
        let mut control_plane = Self {
            process: None,
            argv,
            underlay,
            fixture: fixture_path,
            log: scratch.join("xds-control-plane.log"),
            token_file,
            root_cert: ca_dir.join("root-cert.pem"),
        };
        control_plane.launch()?;
        Ok(control_plane)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let offset = self.log_len();
        let argv: Vec<&str> = self.argv.iter().map(String::as_str).collect();
        self.process = Some(Process::spawn(
            "xds control plane",
            None,
            Some(&self.underlay),
            &argv,
            self.log.clone(),
        )?);
        self.wait_for_log(
            "the control plane to listen",
            offset,
            &["control plane listening"],
        )?;
        Ok(())
    }

    /// The flags that point a ztunnel at this control plane (instead of `--config`).
    pub fn ztunnel_flags(&self, node: u8) -> Vec<String> {
        vec![
            "--xds-address".into(),
            format!("https://{CONTROL_PLANE_ADDRESS}"),
            "--xds-root-cert".into(),
            self.root_cert.display().to_string(),
            "--token-file".into(),
            self.token_file.display().to_string(),
            "--cluster-id".into(),
            "test-cluster".into(),
            "--node-name".into(),
            format!("node-{node}"),
            "--pod-name".into(),
            format!("ztunnel-{node}"),
            "--pod-namespace".into(),
            "istio-system".into(),
            "--instance-ip".into(),
            format!("198.18.0.{node}"),
        ]
    }

    /// Replaces the fixture: the control plane pushes the difference to every client.
    pub fn push(&self, fixture: &str) -> anyhow::Result<()> {
        let temporary = self.fixture.with_extension("tmp");
        std::fs::write(&temporary, fixture)?;
        std::fs::rename(&temporary, &self.fixture)?;
        println!("control plane: fixture replaced ({} bytes)", fixture.len());
        Ok(())
    }

    /// SIGKILLs the process (istiod gone).
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.process.take() {
            process.signal(libc::SIGKILL)?;
            process.wait_exit(Duration::from_secs(10))?;
            println!("control plane killed");
        }
        Ok(())
    }

    /// Starts it again (same address, fixture and root).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.process.is_none(), "the control plane is still running");
        self.launch()
    }

    /// The log's length now: pass it to [`ControlPlane::wait_for_log`] to see only later lines.
    pub fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map_or(0, |meta| meta.len())
    }

    /// Everything the control plane logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for a line after byte `offset` that contains every needle.
    pub fn wait_for_log(
        &self,
        what: &str,
        offset: u64,
        needles: &[&str],
    ) -> anyhow::Result<String> {
        let offset = usize::try_from(offset).unwrap_or(0);
        wait_until(&format!("control plane: {what}"), DEFAULT_TIMEOUT, || {
            let log = self.log_text();
            log.get(offset..)?
                .lines()
                .find(|line| needles.iter().all(|needle| line.contains(needle)))
                .map(str::to_owned)
        })
        .with_context(|| format!("control plane log:\n{}", self.log_text()))
    }
}
