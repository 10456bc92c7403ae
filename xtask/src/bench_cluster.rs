//! `cargo xtask bench [--quick]`: pod-to-pod figures on the two-node harness for three
//! scenarios — direct (no mesh), ebpf and iptables capture — interleaved and repeated.
//!
//! Builds `ztunnel` and the driver (tests/examples/bench_cluster) with the release profile, then
//! runs the driver with ZTUNNEL_BIN pointing at the release binary. The driver prints a table
//! and writes target/bench/bench.json and target/bench/bench.svg. Figures only: nothing is
//! asserted about them.

use std::{process::Command, time::Instant};

use anyhow::Context;

use crate::command::{cargo, workspace_root};

/// Options of the cluster benchmark.
#[derive(Debug, clap::Args)]
pub struct BenchClusterArgs {
    /// Short runs (2 rounds, 2 s per measurement): what CI runs.
    #[arg(long)]
    pub quick: bool,
    /// Rounds of interleaved scenarios (default 5, or 2 with --quick).
    #[arg(long)]
    pub rounds: Option<usize>,
}

/// Builds in release, checks the prerequisites, runs the driver.
pub fn run(args: &BenchClusterArgs) -> anyhow::Result<()> {
    crate::setup::run()?;
    let root = workspace_root();
    let started = Instant::now();
    let object = crate::ebpf_object::dev_build_object()?;
    let status = Command::new(cargo())
        .current_dir(&root)
        .env(crate::ebpf_object::VARIABLE, &object)
        .args([
            "build",
            "--release",
            "-p",
            "ztunnel-user",
            "--bin",
            "ztunnel",
            "-p",
            "ztunnel-e2e",
            "--example",
            "bench_cluster",
        ])
        .status()
        .context("cannot run cargo build --release")?;
    anyhow::ensure!(status.success(), "release build failed ({status})");
    eprintln!(
        "bench: release build took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let release = root.join("target/release");
    let mut driver = Command::new(release.join("examples/bench_cluster"));
    driver
        .current_dir(&root)
        .env("ZTUNNEL_BIN", release.join("ztunnel"))
        .args([
            "--out-dir",
            &root.join("target/bench").display().to_string(),
        ]);
    if args.quick {
        driver.arg("--quick");
    }
    if let Some(rounds) = args.rounds {
        driver.args(["--rounds", &rounds.to_string()]);
    }
    let started = Instant::now();
    let status = driver.status().context("cannot run the benchmark driver")?;
    eprintln!(
        "bench: measurements took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    anyhow::ensure!(status.success(), "benchmark failed ({status})");
    Ok(())
}
