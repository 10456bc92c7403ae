//! Processes the tests start: optionally inside the test cgroup and a pod's netns, killed by PID
//! in `Drop`.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::Duration,
};

use anyhow::Context;

use crate::wait::wait_until;

/// Builds the command line: join `cgroup` first (before `ip netns exec`, which remounts /sys),
/// then enter `netns`, then exec `argv`.
pub fn command(cgroup_procs: Option<&Path>, netns: Option<&str>, argv: &[&str]) -> Command {
    let mut full: Vec<String> = Vec::new();
    if let Some(netns) = netns {
        // nsenter, unlike `ip netns exec`, does not remount /sys, so cgroup paths stay visible.
        full.extend([
            "nsenter".to_owned(),
            format!("--net=/var/run/netns/{netns}"),
        ]);
    }
    full.extend(argv.iter().map(|arg| arg.to_string()));
    match cgroup_procs {
        Some(procs) => {
            let mut command = Command::new("sh");
            command
                .arg("-c")
                .arg("echo $$ > \"$0\" && exec \"$@\"")
                .arg(procs)
                .args(&full);
            command
        }
        None => {
            let mut command = Command::new(&full[0]);
            command.args(&full[1..]);
            command
        }
    }
}

/// Runs a short-lived command to completion and returns its output (whatever the exit status).
pub fn run(
    cgroup_procs: Option<&Path>,
    netns: Option<&str>,
    argv: &[&str],
) -> anyhow::Result<Output> {
    command(cgroup_procs, netns, argv)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {argv:?} (netns {netns:?})"))
}

/// A long-running process; SIGKILLed and reaped on drop unless it already exited.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Process {
    /// Starts `argv` with stdout and stderr appended to `log`.
    pub fn spawn(
        name: &str,
        cgroup_procs: Option<&Path>,
        netns: Option<&str>,
        argv: &[&str],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let file = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = command(cgroup_procs, netns, argv)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {name}: {argv:?}"))?;
        println!(
            "started {name} (pid {}): {argv:?}, log {}",
            child.id(),
            log.display()
        );
        Ok(Self {
            name: name.into(),
            child,
            log,
            exited: None,
        })
    }

    /// The PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` to the process (by PID).
    pub fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        // SAFETY: kill(2) on the PID of our own child, which we have not reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        anyhow::ensure!(
            rc == 0,
            "cannot signal {} (pid {}): {}",
            self.name,
            self.pid(),
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let name = self.name.clone();
        let child = &mut self.child;
        let status = wait_until(&format!("{name} to exit"), timeout, || {
            child.try_wait().ok().flatten()
        })?;
        self.exited = Some(status);
        Ok(status)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.exited.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.signal(libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// `prlimit` arguments that raise `RLIMIT_NOFILE` of the command they prefix to `wanted`, or to
/// the hard limit this process may grant when that is lower (raising the hard limit needs
/// `CAP_SYS_RESOURCE`, which containers often drop). Returns the arguments and the soft limit.
pub fn open_files_prefix(wanted: u64) -> anyhow::Result<(Vec<String>, u64)> {
    // SAFETY: getrlimit writes into the struct we own.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RLIMIT_NOFILE is a valid resource.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    anyhow::ensure!(
        rc == 0,
        "getrlimit(RLIMIT_NOFILE): {}",
        std::io::Error::last_os_error()
    );
    let hard = limit.rlim_max;
    let soft = wanted.min(hard);
    Ok((
        vec![
            "prlimit".to_owned(),
            format!("--nofile={soft}:{hard}"),
            "--".to_owned(),
        ],
        soft,
    ))
}
