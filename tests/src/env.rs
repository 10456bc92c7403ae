//! One test's private world: a per-run name prefix, a cgroup under the cgroup-v2 mount, a
//! private bpffs mount and a scratch directory. Removed in `Drop`; [`leftovers`] proves it.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::Context;

use crate::{net::Node, process};

/// Where cgroup v2 is mounted on the CI machines (hybrid hierarchy).
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";

static NEXT_ENV: AtomicU32 = AtomicU32::new(0);

/// A test's cgroup, bpffs, scratch dir and name prefix.
pub struct TestEnv {
    /// Prefix of every name this test creates (netns, cgroup, directories).
    pub prefix: String,
    /// Scratch directory (`/tmp/<prefix>`): logs, run dir, the bpffs mount point.
    pub scratch: PathBuf,
    /// The test cgroup (`<cgroup2 root>/<prefix>`).
    pub cgroup: PathBuf,
    /// The private bpffs mount point.
    pub bpffs: PathBuf,
    mounted: bool,
}

impl TestEnv {
    /// Checks prerequisites and creates the cgroup, scratch dir and bpffs mount for `test`.
    pub fn new(test: &str) -> anyhow::Result<Self> {
        check_prerequisites()?;
        let prefix = format!(
            "zte{}x{}",
            std::process::id(),
            NEXT_ENV.fetch_add(1, Ordering::SeqCst)
        );
        let scratch = std::env::temp_dir().join(&prefix);
        let cgroup = Path::new(CGROUP2_ROOT).join(&prefix);
        let bpffs = scratch.join("bpf");
        let mut env = Self {
            prefix,
            scratch,
            cgroup,
            bpffs,
            mounted: false,
        };
        std::fs::create_dir_all(&env.bpffs)
            .with_context(|| format!("cannot create {}", env.bpffs.display()))?;
        std::fs::create_dir_all(env.run_dir())?;
        std::fs::create_dir(&env.cgroup)
            .with_context(|| format!("cannot create cgroup {}", env.cgroup.display()))?;
        checked(
            Command::new("mount")
                .args(["-t", "bpf", "bpf"])
                .arg(&env.bpffs),
        )?;
        env.mounted = true;
        println!(
            "[{test}] env {}: cgroup {}, bpffs {}",
            env.prefix,
            env.cgroup.display(),
            env.bpffs.display()
        );
        Ok(env)
    }

    /// The bpffs root passed to ztunnel.
    pub fn bpffs_root(&self) -> PathBuf {
        self.bpffs.join("ztunnel")
    }

    /// The run dir passed to ztunnel.
    pub fn run_dir(&self) -> PathBuf {
        self.scratch.join("run")
    }

    /// The cgroup's `cgroup.procs` (processes written there are in the test cgroup).
    pub fn cgroup_procs(&self) -> PathBuf {
        self.cgroup.join("cgroup.procs")
    }

    /// A simulated node: a netns with a bridge; its pods get 198.18.`index`.x/24.
    pub fn node(&self, index: u8) -> anyhow::Result<Node> {
        Node::create(&format!("{}-n{index}", self.prefix), index)
    }

    /// Runs a short-lived command in `pod`'s netns inside the test cgroup.
    pub fn run_in_pod(
        &self,
        pod: &crate::Pod,
        argv: &[&str],
    ) -> anyhow::Result<std::process::Output> {
        process::run(Some(&self.cgroup_procs()), Some(&pod.netns), argv)
    }

    /// `ztunnel enroll` for `pod` with both its addresses.
    pub fn enroll(&self, pod: &crate::Pod) -> anyhow::Result<String> {
        let (ip, ipv6) = (pod.ip.to_string(), pod.ipv6.to_string());
        crate::ztunnel::cli(
            self,
            &[
                "enroll",
                "--netns",
                &pod.netns_path(),
                "--ip",
                &ip,
                "--ip",
                &ipv6,
                "--name",
                &pod.name,
            ],
        )
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.bpffs).status();
        }
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = std::fs::remove_dir_all(&self.scratch);
        // Nodes and pods are dropped before the env (declared after it), so by now nothing of
        // this prefix may remain. Every test checks its own teardown this way.
        let left = leftovers(&self.prefix);
        if !left.is_empty() && !std::thread::panicking() {
            panic!("test env {} left behind: {left:#?}", self.prefix);
        }
    }
}

/// Resources of earlier runs whose test process is gone (prefix `zte<pid>x<n>`, dead pid):
/// what a crashed or killed run left behind.
pub fn leftovers_of_dead_runs() -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    names.extend(
        netns
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .map(String::from),
    );
    for dir in [Path::new(CGROUP2_ROOT).to_path_buf(), std::env::temp_dir()] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            names.extend(
                entries
                    .flatten()
                    .map(|entry| entry.file_name().to_string_lossy().into_owned()),
            );
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    names.extend(
        mounts
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1))
            .flat_map(|path| path.split('/').map(String::from).collect::<Vec<_>>()),
    );
    let mut dead: Vec<String> = names
        .into_iter()
        .filter_map(|name| {
            let pid: u32 = name.strip_prefix("zte")?.split('x').next()?.parse().ok()?;
            (!Path::new(&format!("/proc/{pid}")).exists()).then_some(name)
        })
        .collect();
    dead.sort();
    dead.dedup();
    dead
}

/// Everything with `prefix` in its name that still exists: netns, host links, cgroup, mounts,
/// scratch dir. Empty when a test cleaned up after itself.
pub fn leftovers(prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    found.extend(
        netns
            .lines()
            .filter(|line| line.contains(prefix))
            .map(|line| format!("netns {line}")),
    );
    let links = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    found.extend(
        links
            .lines()
            .filter(|line| line.contains(prefix))
            .map(|line| format!("link {line}")),
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    found.extend(
        mounts
            .lines()
            .filter(|line| line.contains(prefix))
            .map(|line| format!("mount {line}")),
    );
    let cgroup = Path::new(CGROUP2_ROOT).join(prefix);
    if cgroup.exists() {
        found.push(format!("cgroup {}", cgroup.display()));
    }
    let scratch = std::env::temp_dir().join(prefix);
    if scratch.exists() {
        found.push(format!("directory {}", scratch.display()));
    }
    found
}

/// Runs a command and fails with its stderr if it does not succeed.
pub fn checked(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Fails, naming what is missing, unless the machine can run the suite.
pub fn check_prerequisites() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "the end-to-end tests need root (netns, bpffs, cgroups, BPF); run them as root (`cargo xtask test`)"
    );
    anyhow::ensure!(
        Path::new(CGROUP2_ROOT).join("cgroup.procs").exists(),
        "no cgroup v2 hierarchy at {CGROUP2_ROOT} (mount one: `mount -t cgroup2 none {CGROUP2_ROOT}`)"
    );
    for tool in ["ip", "nc", "curl", "bpftool", "mount", "umount", "sh"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
        anyhow::ensure!(
            found,
            "missing tool {tool} on PATH (install it: `cargo xtask setup`)"
        );
    }
    crate::ztunnel::binary().map(|_| ())
}
