//! Running the ztunnel binary: the daemon (in the test cgroup) and CLI commands.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;

use crate::{
    Pod, TestEnv,
    process::Process,
    wait::{DEFAULT_TIMEOUT, wait_until},
};

/// The ztunnel binary: `$ZTUNNEL_BIN`, else `<workspace>/target/debug/ztunnel`.
pub fn binary() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("ZTUNNEL_BIN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/ztunnel"),
    };
    anyhow::ensure!(
        path.is_file(),
        "ztunnel binary not found at {} (run `cargo build -p ztunnel-user` or set ZTUNNEL_BIN)",
        path.display()
    );
    Ok(path)
}

/// Runs `ztunnel <args> --bpffs-root <env> --run-dir <env>` and returns stdout; fails with
/// stderr on a non-zero exit.
pub fn cli(env: &TestEnv, args: &[&str]) -> anyhow::Result<String> {
    let output = cli_output(env, args)?;
    anyhow::ensure!(
        output.status.success(),
        "ztunnel {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Like [`cli`] but returns the raw output.
pub fn cli_output(env: &TestEnv, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let binary = binary()?;
    std::process::Command::new(&binary)
        .args(args)
        .arg("--bpffs-root")
        .arg(env.bpffs_root())
        .arg("--run-dir")
        .arg(env.run_dir())
        .output()
        .with_context(|| format!("cannot run {} {args:?}", binary.display()))
}

/// A running `ztunnel daemon` (or `agent` or `proxy`), in the test cgroup, attached to it.
/// Killed on drop.
pub struct Daemon {
    process: Process,
}

/// The mesh root for daemons of this scratch dir (`<scratch>/ca`), made with `ztunnel ca init`
/// the first time it is asked for, so every daemon of a test trusts the same root.
pub fn mesh_root(scratch: &std::path::Path) -> anyhow::Result<PathBuf> {
    let directory = scratch.join("ca");
    if !directory.join("root-cert.pem").exists() {
        let output = std::process::Command::new(binary()?)
            .args(["ca", "init"])
            .arg(&directory)
            .output()
            .context("cannot run ztunnel ca init")?;
        anyhow::ensure!(
            output.status.success(),
            "ztunnel ca init {} failed: {}",
            directory.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(directory)
}

/// The flags a `ztunnel` process of this env takes.
enum Role {
    /// `ztunnel daemon`: agent and proxy.
    Daemon,
    /// `ztunnel agent`: capture only.
    Agent,
    /// `ztunnel proxy`: a ZDS client of the env's agent.
    Proxy,
}

impl Daemon {
    /// Starts the daemon (extra flags appended) and waits until it says it is ready.
    pub fn start(env: &TestEnv, extra: &[&str]) -> anyhow::Result<Self> {
        let daemon = Self::spawn(env, Role::Daemon, extra, Some(&env.cgroup_procs()))?;
        daemon.wait_for_log("the daemon to be ready", "ztunnel daemon ready")?;
        Ok(daemon)
    }

    /// Starts `ztunnel agent` (capture only, in the test cgroup) and waits until it is ready.
    pub fn start_agent(env: &TestEnv, extra: &[&str]) -> anyhow::Result<Self> {
        let agent = Self::spawn(env, Role::Agent, extra, Some(&env.cgroup_procs()))?;
        agent.wait_for_log("the agent to be ready", "capture agent ready")?;
        Ok(agent)
    }

    /// Starts `ztunnel proxy` against the env's agent socket, in the test cgroup unless
    /// `outside_cgroup`; does not wait (it connects when the agent is there).
    pub fn spawn_proxy(env: &TestEnv, outside_cgroup: bool) -> anyhow::Result<Self> {
        let cgroup_procs = env.cgroup_procs();
        let cgroup = (!outside_cgroup).then_some(cgroup_procs.as_path());
        Self::spawn(env, Role::Proxy, &[], cgroup)
    }

    fn spawn(
        env: &TestEnv,
        role: Role,
        extra: &[&str],
        cgroup_procs: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let binary = binary()?.to_string_lossy().into_owned();
        let root = env.bpffs_root().to_string_lossy().into_owned();
        let run_dir = env.run_dir().to_string_lossy().into_owned();
        let zds_socket = env.run_dir().join("ztunnel.sock");
        let zds_socket = zds_socket.to_string_lossy().into_owned();
        let cgroup = env.cgroup.to_string_lossy().into_owned();
        let ca_dir = mesh_root(&env.scratch)?.to_string_lossy().into_owned();
        let capture = [
            "--bpffs-root",
            &root,
            "--run-dir",
            &run_dir,
            "--cgroup",
            &cgroup,
            "--kernel-log-level",
            "debug",
        ];
        // These share the host netns, so their operations servers take free ports.
        let proxy = [
            "--ca-dir",
            &ca_dir,
            "--admin-address",
            "127.0.0.1:0",
            "--metrics-address",
            "127.0.0.1:0",
            "--readiness-address",
            "127.0.0.1:0",
        ];
        // Kernel (aya-log) records arrive through tracing under target ztunnel::ebpf.
        let mut argv = vec!["env", "RUST_LOG=info,ztunnel::ebpf=debug", &binary];
        let name = match role {
            Role::Daemon => {
                argv.push("daemon");
                argv.extend(proxy);
                argv.extend(capture);
                "ztunnel daemon"
            }
            Role::Agent => {
                argv.push("agent");
                argv.extend(capture);
                "ztunnel agent"
            }
            Role::Proxy => {
                argv.extend(["proxy", "--zds-socket", &zds_socket]);
                argv.extend(proxy);
                "ztunnel proxy"
            }
        };
        argv.extend_from_slice(extra);
        let log = env.scratch.join(format!(
            "{}-{}.log",
            name.replace(' ', "-"),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let process = Process::spawn(name, cgroup_procs, None, &argv, log)?;
        Ok(Self { process })
    }

    /// Waits until a log line contains every one of `needles`; returns the line.
    pub fn wait_for_log_all(&self, what: &str, needles: &[&str]) -> anyhow::Result<String> {
        wait_until(what, DEFAULT_TIMEOUT, || {
            let text = self.process.log_text();
            if text.contains("Error:") {
                return Some(Err(anyhow::anyhow!(
                    "daemon failed while waiting for {what}:\n{text}"
                )));
            }
            text.lines()
                .find(|line| needles.iter().all(|needle| line.contains(needle)))
                .map(|line| Ok(line.to_owned()))
        })
        .map_err(|error| error.context(format!("daemon log:\n{}", self.process.log_text())))?
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_for_log(&self, what: &str, needle: &str) -> anyhow::Result<String> {
        self.wait_for_log_all(what, &[needle])
    }

    /// Waits until the daemon has opened `pod`'s in-pod listeners.
    pub fn wait_serving(&self, pod: &Pod) -> anyhow::Result<()> {
        let needle = format!("pod={}", pod.name);
        self.wait_for_log_all(
            &format!("the daemon to serve pod {}", pod.name),
            &["serving pod", &needle],
        )
        .map(|_| ())
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        self.process.log_text()
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> anyhow::Result<String> {
        self.process.signal(libc::SIGTERM)?;
        let status = self.process.wait_exit(DEFAULT_TIMEOUT)?;
        anyhow::ensure!(
            status.success(),
            "daemon exited with {status} after SIGTERM:\n{}",
            self.process.log_text()
        );
        Ok(self.process.log_text())
    }

    /// SIGKILL (a crash), then wait for it to be gone.
    pub fn crash(mut self) -> anyhow::Result<()> {
        self.process.signal(libc::SIGKILL)?;
        self.process.wait_exit(Duration::from_secs(10))?;
        Ok(())
    }
}

/// How a daemon that was expected to refuse to start ended.
#[derive(Debug)]
pub struct RefusedStart {
    /// Its exit status.
    pub status: std::process::ExitStatus,
    /// Everything it wrote.
    pub log: String,
    /// From spawn to exit.
    pub elapsed: Duration,
}

/// Starts `ztunnel daemon` with `--bpffs-root bpffs_root` (otherwise like [`Daemon::start`])
/// and waits up to `timeout` for it to exit on its own; fails if it is still running then.
pub fn daemon_until_exit(
    env: &TestEnv,
    bpffs_root: &std::path::Path,
    timeout: Duration,
) -> anyhow::Result<RefusedStart> {
    let binary = binary()?;
    let ca_dir = mesh_root(&env.scratch)?;
    let argv: Vec<String> = vec![
        binary.display().to_string(),
        "daemon".into(),
        "--ca-dir".into(),
        ca_dir.display().to_string(),
        "--bpffs-root".into(),
        bpffs_root.display().to_string(),
        "--run-dir".into(),
        env.run_dir().display().to_string(),
        "--cgroup".into(),
        env.cgroup.display().to_string(),
        "--admin-address".into(),
        "127.0.0.1:0".into(),
        "--metrics-address".into(),
        "127.0.0.1:0".into(),
        "--readiness-address".into(),
        "127.0.0.1:0".into(),
    ];
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    // One log per attempt: the roots of two attempts may share a file name.
    let log = env.scratch.join(format!(
        "refused-daemon-{}.log",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let started = std::time::Instant::now();
    let mut process = Process::spawn(
        "ztunnel daemon (expected to refuse)",
        Some(&env.cgroup_procs()),
        None,
        &argv,
        log,
    )?;
    let status = process.wait_exit(timeout).map_err(|error| {
        error.context(format!(
            "the daemon did not exit on its own; its log:\n{}",
            process.log_text()
        ))
    })?;
    Ok(RefusedStart {
        status,
        log: process.log_text(),
        elapsed: started.elapsed(),
    })
}

/// A pod's kernel counters, as `ztunnel inspect stats --json` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Outbound connects redirected to 15001.
    pub outbound_redirected: u64,
    /// Outbound connects let through.
    pub outbound_passed: u64,
    /// Outbound connects refused.
    pub outbound_refused: u64,
    /// Inbound SYNs steered to 15006.
    pub inbound_redirected: u64,
    /// Inbound SYNs let through.
    pub inbound_passed: u64,
    /// Inbound SYNs dropped.
    pub inbound_refused: u64,
}

/// Reads `pod`'s counters from the pinned maps (`ztunnel inspect stats --json`).
pub fn counters(env: &TestEnv, pod: &Pod) -> anyhow::Result<Counters> {
    let text = cli(env, &["inspect", "stats", "--json"])?;
    let rows: serde_json::Value =
        serde_json::from_str(text.trim()).with_context(|| format!("inspect output: {text}"))?;
    let name = format!("default/{}", pod.name);
    let row = rows
        .as_array()
        .into_iter()
        .flatten()
        .find(|row| row["name"].as_str() == Some(name.as_str()))
        .ok_or_else(|| anyhow::anyhow!("pod {name} not in `ztunnel inspect stats`: {text}"))?;
    let field = |key: &str| row[key].as_u64().unwrap_or(0);
    Ok(Counters {
        outbound_redirected: field("outbound_redirected"),
        outbound_passed: field("outbound_passed"),
        outbound_refused: field("outbound_refused"),
        inbound_redirected: field("inbound_redirected"),
        inbound_passed: field("inbound_passed"),
        inbound_refused: field("inbound_refused"),
    })
}
