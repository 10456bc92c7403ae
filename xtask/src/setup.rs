//! `cargo xtask setup`: installs what build, tests and demo need, and checks the kernel.
//!
//! Idempotent: every step first checks whether its work is already done, so a second run takes
//! a few seconds. Fails with a message naming what is missing and how to get it.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::command::{output, run_checked, stdout_if_ok};

/// Debian packages the build, tests and demo use.
const DEBIAN_PACKAGES: &[&str] = &[
    "bpftool",
    "containernetworking-plugins",
    "curl",
    "iperf3",
    "iproute2",
    // `ztunnel daemon --capture iptables` (the fallback and the benchmark baseline); nft backend.
    "iptables",
    "netcat-openbsd",
    "nginx-light",
    "procps",
    "tcpdump",
    "tshark",
];

/// Python packages the tests use, installed into a virtualenv under `target/`: the HBONE interop
/// peer (an HTTP/2 implementation that is not ours) and the Kubernetes manifest validator.
const PYTHON_PACKAGES: &[&str] = &["h2>=4.1,<5", "kubernetes-validate==1.37.0"];

/// The bpf-linker release we install (`cargo install --locked`, so its dependencies are the
/// ones it was released with).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// LLVM majors that [`BPF_LINKER_VERSION`] can be built against (its `llvm-N` features).
const BPF_LINKER_LLVM_MAJORS: &[u32] = &[21, 22, 23];

/// Where the bpffs root that a real node (and the demo) uses is mounted.
const NODE_BPFFS: &str = "/sys/fs/bpf";

pub fn run() -> anyhow::Result<()> {
    require_root()?;
    check_kernel()?;
    install_debian_packages()?;
    install_nightly_rust_src()?;
    install_bpf_linker()?;
    mount_node_bpffs()?;
    install_python_packages()?;
    eprintln!("setup: everything is in place");
    Ok(())
}

fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "setup needs root (euid is {euid}): it installs Debian packages and the tests create \
             network namespaces, cgroups and BPF programs; run it as root"
        );
    }
    Ok(())
}

/// The kernel features every test and the daemon rely on.
fn check_kernel() -> anyhow::Result<()> {
    let filesystems = fs::read_to_string("/proc/filesystems")
        .context("cannot read /proc/filesystems to check for bpffs and cgroup2")?;
    let mut missing = Vec::new();
    if !filesystems.split_whitespace().any(|name| name == "bpf") {
        missing.push("bpffs (CONFIG_BPF_SYSCALL)");
    }
    if !filesystems.split_whitespace().any(|name| name == "cgroup2") {
        missing.push("cgroup v2");
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        missing.push("kernel BTF at /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF)");
    }
    if cgroup2_mount()?.is_none() {
        missing
            .push("a mounted cgroup v2 hierarchy (mount -t cgroup2 none /sys/fs/cgroup/unified)");
    }
    if !missing.is_empty() {
        bail!(
            "this kernel lacks what ztunnel needs: {}",
            missing.join(", ")
        );
    }
    Ok(())
}

/// The first cgroup v2 mount point in /proc/mounts.
pub fn cgroup2_mount() -> anyhow::Result<Option<PathBuf>> {
    let mounts = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    Ok(mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
    }))
}

fn install_debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|package| !debian_package_installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    run_checked(Command::new("apt-get").arg("update").arg("-q"))
        .context("apt-get update failed: is the Debian mirror reachable?")?;
    // Only the missing packages, none of them upgraded if present (`--no-upgrade`); apt still
    // upgrades a dependency when a new package needs a newer version of it, and says so.
    run_checked(
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "--no-upgrade",
            ])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("cannot install Debian packages {}", missing.join(" ")))?;
    Ok(())
}

fn debian_package_installed(package: &str) -> bool {
    stdout_if_ok(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.ends_with("installed") && !status.contains("not-installed"))
}

/// Installs the nightly toolchain (only the eBPF crate builds with it) when rustup has none,
/// and its `rust-src` component (`-Z build-std=core` for the BPF target).
fn install_nightly_rust_src() -> anyhow::Result<()> {
    let toolchains = stdout_if_ok(Command::new("rustup").args(["toolchain", "list"]))
        .context("`rustup toolchain list` failed: is rustup installed (https://rustup.rs)?")?;
    if !toolchains.lines().any(|line| line.starts_with("nightly")) {
        eprintln!("setup: installing the nightly toolchain with rust-src (for the eBPF crate)");
        return run_checked(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
        .context("cannot install the nightly toolchain (see rustup's output above)");
    }
    let installed = stdout_if_ok(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .context("`rustup component list --toolchain nightly` failed")?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    run_checked(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

/// The nightly toolchain's sysroot and LLVM major version, as bpf-linker must match them.
struct NightlyLlvm {
    sysroot: PathBuf,
    major: u32,
}

fn nightly_llvm() -> anyhow::Result<NightlyLlvm> {
    let version = stdout_if_ok(Command::new("rustc").args(["+nightly", "-vV"]))
        .context("`rustc +nightly -vV` failed: is the nightly toolchain installed?")?;
    let llvm = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` printed no `LLVM version:` line")?;
    let major = llvm
        .split('.')
        .next()
        .and_then(|major| major.trim().parse().ok())
        .with_context(|| format!("cannot read the LLVM major version from {llvm:?}"))?;
    let sysroot = stdout_if_ok(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("`rustc +nightly --print sysroot` failed")?;
    Ok(NightlyLlvm {
        sysroot: PathBuf::from(sysroot.trim()),
        major,
    })
}

fn cargo_home() -> anyhow::Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// Installs cargo-fuzz (for `cargo xtask fuzz`) unless it is already there. Not part of
/// [`run`]: only fuzzing needs it, and its build takes a minute or two.
pub fn install_cargo_fuzz() -> anyhow::Result<()> {
    if stdout_if_ok(Command::new("cargo").args(["fuzz", "--version"])).is_some() {
        return Ok(());
    }
    eprintln!("setup: installing cargo-fuzz from crates.io (a minute or two)");
    run_checked(Command::new("cargo").args(["+stable", "install", "cargo-fuzz", "--locked"]))
        .context("cannot install cargo-fuzz (see cargo's output above)")
}

/// Installs bpf-linker [`BPF_LINKER_VERSION`] linked against the nightly toolchain's own
/// libLLVM, rebuilding it when another version is installed or the nightly's LLVM has changed
/// since the last install (recorded in a stamp file).
fn install_bpf_linker() -> anyhow::Result<()> {
    let llvm = nightly_llvm()?;
    let cargo_home = cargo_home()?;
    let stamp_path = cargo_home.join("bpf-linker.llvm");
    let stamp = format!("{} {}\n", llvm.major, llvm.sysroot.display());
    let binary = cargo_home.join("bin/bpf-linker");
    // `bpf-linker --version` prints `bpf-linker 0.13.0`.
    let pinned = stdout_if_ok(Command::new(&binary).arg("--version"))
        .is_some_and(|version| version.split_whitespace().nth(1) == Some(BPF_LINKER_VERSION));
    if pinned && fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) {
        return Ok(());
    }
    if !BPF_LINKER_LLVM_MAJORS.contains(&llvm.major) {
        bail!(
            "the nightly toolchain uses LLVM {}, but bpf-linker can be built for LLVM {:?} only; \
             install a nightly whose LLVM is one of those",
            llvm.major,
            BPF_LINKER_LLVM_MAJORS
        );
    }
    let prefix = llvm_prefix(&llvm, &cargo_home)?;
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {} (a few minutes)",
        llvm.major
    );
    run_checked(
        Command::new("cargo")
            .args([
                "+stable",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
                "--no-default-features",
            ])
            .arg("--features")
            .arg(format!("llvm-{}", llvm.major))
            .env("LLVM_PREFIX", &prefix),
    )
    .context("cannot build bpf-linker (see cargo's output above)")?;
    fs::write(&stamp_path, stamp)
        .with_context(|| format!("cannot write {}", stamp_path.display()))?;
    Ok(())
}

/// A directory whose `lib/` holds the nightly's libLLVM under both the name the linker looks
/// for (`libLLVM.so`) and its soname, so bpf-linker's rpath finds it at run time.
fn llvm_prefix(llvm: &NightlyLlvm, cargo_home: &Path) -> anyhow::Result<PathBuf> {
    let toolchain_lib = llvm.sysroot.join("lib");
    let entries = fs::read_dir(&toolchain_lib)
        .with_context(|| format!("cannot list {}", toolchain_lib.display()))?;
    let library = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libLLVM.so."))
        })
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}: the nightly toolchain ships no shared LLVM",
                toolchain_lib.display()
            )
        })?;
    let prefix = cargo_home.join(format!("bpf-linker-llvm-{}", llvm.major));
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    let soname = library
        .file_name()
        .context("libLLVM path has no file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(soname)] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&library, &link)
            .with_context(|| format!("cannot link {} to {}", link.display(), library.display()))?;
    }
    Ok(prefix)
}

/// Mounts bpffs at /sys/fs/bpf as a Kubernetes node has it, for the daemon's default pin root.
/// Tests mount their own private bpffs instances instead.
fn mount_node_bpffs() -> anyhow::Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&NODE_BPFFS) && fields.get(2) == Some(&"bpf")
    });
    if mounted {
        return Ok(());
    }
    fs::create_dir_all(NODE_BPFFS).with_context(|| format!("cannot create {NODE_BPFFS}"))?;
    let result = output(Command::new("mount").args(["-t", "bpf", "bpf", NODE_BPFFS]))?;
    if !result.status.success() {
        bail!(
            "cannot mount bpffs on {NODE_BPFFS}: {}",
            String::from_utf8_lossy(&result.stderr).trim()
        );
    }
    eprintln!("setup: mounted bpffs on {NODE_BPFFS}");
    Ok(())
}

/// The virtualenv the tests' Python tools live in.
pub fn python_venv() -> PathBuf {
    crate::command::workspace_root().join("target/python")
}

/// Creates the virtualenv and installs [`PYTHON_PACKAGES`] into it, unless a stamp says the same
/// list is already installed.
fn install_python_packages() -> anyhow::Result<()> {
    let venv = python_venv();
    let stamp_path = venv.join("ztunnel-packages");
    let stamp = PYTHON_PACKAGES.join("\n");
    if fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str())
        && venv.join("bin/python").exists()
    {
        return Ok(());
    }
    eprintln!(
        "setup: installing Python test tools into {}",
        venv.display()
    );
    run_checked(Command::new("python3").arg("-m").arg("venv").arg(&venv)).context(
        "cannot create a Python virtualenv (is python3 with the venv module installed?)",
    )?;
    run_checked(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PYTHON_PACKAGES),
    )
    .with_context(|| format!("cannot install {} from PyPI", PYTHON_PACKAGES.join(" ")))?;
    fs::write(&stamp_path, stamp)
        .with_context(|| format!("cannot write {}", stamp_path.display()))?;
    Ok(())
}
