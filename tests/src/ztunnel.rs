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

/// A running `ztunnel daemon`, in the test cgroup, attached to it. Killed on drop.
pub struct Daemon {
    process: Process,
}

impl Daemon {
    /// Starts the daemon (extra flags appended) and waits until it says it is ready.
    pub fn start(env: &TestEnv, extra: &[&str]) -> anyhow::Result<Self> {
        let binary = binary()?;
        let binary = binary.to_string_lossy();
        let root = env.bpffs_root();
        let run_dir = env.run_dir();
        let cgroup = env.cgroup.to_string_lossy().into_owned();
        let mut argv = vec![
            binary.as_ref(),
            "daemon",
            "--bpffs-root",
            root.to_str().unwrap_or_default(),
            "--run-dir",
            run_dir.to_str().unwrap_or_default(),
            "--cgroup",
            &cgroup,
        ];
        argv.extend_from_slice(extra);
        let log = env.scratch.join(format!(
            "daemon-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        // Kernel (aya-log) records arrive through tracing under target ztunnel::ebpf.
        let mut full = vec!["env", "RUST_LOG=info,ztunnel::ebpf=debug"];
        full.extend(argv);
        let process = Process::spawn(
            "ztunnel daemon",
            Some(&env.cgroup_procs()),
            None,
            &full,
            log,
        )?;
        let daemon = Self { process };
        daemon.wait_for_log("the daemon to be ready", "ztunnel daemon ready")?;
        Ok(daemon)
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
