//! `cargo xtask bench hbone`: builds the HBONE benchmark driver in release and runs it.
//!
//! The driver (tests/examples/bench_hbone.rs) measures one-stream throughput and 1-byte / 1 KiB
//! round-trip latency through outbound → HBONE → inbound on loopback against direct loopback
//! TCP, interleaved over several runs, prints medians and ratios and writes them as JSON to
//! target/bench/hbone.json.

use std::process::Command;

/// Options passed through to the driver.
#[derive(Debug, clap::Args)]
pub struct BenchHboneArgs {
    /// Interleaved runs (medians are taken over them).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// MiB sent per throughput measurement.
    #[arg(long, default_value_t = 1024)]
    pub megabytes: u64,
    /// Round trips per latency measurement.
    #[arg(long, default_value_t = 5000)]
    pub round_trips: usize,
}

/// Builds and runs the driver in release mode.
pub fn run(args: &BenchHboneArgs) -> anyhow::Result<()> {
    let object = crate::ebpf_object::dev_build_object()?;
    let status = Command::new(crate::command::cargo())
        .env(crate::ebpf_object::VARIABLE, &object)
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "ztunnel-e2e",
            "--example",
            "bench_hbone",
            "--",
        ])
        .args(["--runs", &args.runs.to_string()])
        .args(["--megabytes", &args.megabytes.to_string()])
        .args(["--round-trips", &args.round_trips.to_string()])
        .status()
        .map_err(|error| anyhow::anyhow!("cannot run cargo for the HBONE benchmark: {error}"))?;
    anyhow::ensure!(status.success(), "HBONE benchmark failed ({status})");
    Ok(())
}
