//! `cargo xtask`: the project's developer workflows.

mod bench_cluster;
mod bench_hbone;
mod command;
mod demo;
mod ebpf_object;
mod fuzz;
mod setup;
mod test;

use clap::{Parser, Subcommand};

/// Developer workflows for ztunnel.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install everything that build, tests and demo need (idempotent; needs root).
    Setup,
    /// Run setup, the unit tests and the privileged end-to-end suite.
    Test(test::TestArgs),
    /// Run setup and build, then show two nodes of pods talking through the mesh (needs root).
    Demo(demo::DemoArgs),
    /// Run each libFuzzer target in fuzz/ for a bounded time (nightly, cargo-fuzz; installs
    /// cargo-fuzz if missing) and report executions, coverage and crashes.
    Fuzz(fuzz::FuzzArgs),
    /// Benchmarks (figures, never pass/fail). Without a subcommand: pod to pod across two
    /// nodes, direct vs ebpf vs iptables capture; writes target/bench/bench.{json,svg}.
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        #[command(subcommand)]
        bench: Option<Bench>,
        #[command(flatten)]
        cluster: bench_cluster::BenchClusterArgs,
    },
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// One-stream throughput and round-trip latency through outbound → HBONE → inbound on
    /// loopback against direct loopback TCP; writes target/bench/hbone.json.
    Hbone(bench_hbone::BenchHboneArgs),
}

fn main() -> anyhow::Result<()> {
    forget_cargo_run_environment();
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Test(args) => test::run(&args),
        Task::Demo(args) => demo::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Bench {
            bench: Some(Bench::Hbone(args)),
            ..
        } => bench_hbone::run(&args),
        Task::Bench {
            bench: None,
            cluster,
        } => bench_cluster::run(&cluster),
    }
}

/// Removes what `cargo run` (the `cargo xtask` alias) set for this binary alone, so that the
/// cargo commands xtask runs see the same environment as a cargo run from the shell. ring's
/// build script watches `CARGO_MANIFEST_DIR`: inherited as `xtask/`, it made every nested
/// build recompile ring, rustls and ztunnel-user, and the next shell build recompile them back.
fn forget_cargo_run_environment() {
    const SET_BY_CARGO_RUN: &[&str] = &[
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
    ];
    let names: Vec<std::ffi::OsString> = std::env::vars_os()
        .map(|(name, _)| name)
        .filter(|name| {
            let name = name.to_string_lossy();
            SET_BY_CARGO_RUN.contains(&name.as_ref()) || name.starts_with("CARGO_PKG_")
        })
        .collect();
    for name in names {
        // SAFETY: called first thing in main, before any thread exists, so nothing reads the
        // environment concurrently.
        unsafe { std::env::remove_var(name) };
    }
}
