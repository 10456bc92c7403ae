//! The kernel programs, compiled once per checkout.
//!
//! `ztunnel-user`'s build script compiles `ztunnel-ebpf` (nightly, bpf-linker) into its own
//! `OUT_DIR`, so every profile and target directory (dev, release, the fuzz build) compiles the
//! same object again: minutes each on a 2-core machine. The release and fuzz builds instead take
//! the dev build's object through `ZTUNNEL_EBPF_OBJECT`, which the build script copies (and
//! watches: a changed object reruns it).

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::Context;

use crate::command::{cargo, workspace_root};

/// The variable the build script reads.
pub const VARIABLE: &str = "ZTUNNEL_EBPF_OBJECT";

/// Builds `ztunnel-user` in the dev profile (nothing to do when it is up to date) and returns
/// the path of the kernel object its build script produced.
pub fn dev_build_object() -> anyhow::Result<PathBuf> {
    let mut child = Command::new(cargo())
        .current_dir(workspace_root())
        .env_remove(VARIABLE)
        .args([
            "build",
            "-p",
            "ztunnel-user",
            "--lib",
            "--message-format=json-render-diagnostics",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run cargo build -p ztunnel-user")?;
    let stdout = child
        .stdout
        .take()
        .context("cargo build's standard output is missing")?;
    let mut out_dir = None;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let is_ours = message["package_id"]
            .as_str()
            .is_some_and(|id| id.contains("ztunnel-user"));
        if message["reason"] == "build-script-executed" && is_ours {
            out_dir = message["out_dir"].as_str().map(PathBuf::from);
        }
    }
    let status = child.wait().context("cannot wait for cargo build")?;
    anyhow::ensure!(
        status.success(),
        "cargo build -p ztunnel-user failed ({status})"
    );
    let object = out_dir
        .context("cargo build did not report ztunnel-user's build script output directory")?
        .join("ztunnel");
    anyhow::ensure!(
        object.is_file(),
        "the dev build has no kernel object at {}",
        object.display()
    );
    Ok(object)
}
