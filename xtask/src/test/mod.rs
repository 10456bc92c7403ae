//! `cargo xtask test`: setup, lint, unit tests and the privileged end-to-end suite.
//!
//! It ends with the end-to-end tests' figures (each test's block under what it expects) and one
//! line, `test summary: N passed, N failed, N ignored (T s)`, T being the whole command's time;
//! it exits non-zero when anything failed. Passing tests' captured output is left out unless
//! `--verbose` (see [`output`]).

mod figures;
mod output;

use std::{env, path::PathBuf, process::Command, time::Instant};

use anyhow::Context;
use clap::Args;

use crate::{
    command::{cargo, run_streaming, workspace_root},
    setup,
};
use output::TestOutput;

/// Options of `cargo xtask test`. Cargo commands run on the workspace's default members: the
/// eBPF crate builds only for the BPF target, through `ztunnel-user/build.rs`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Run only the tests whose name contains this text.
    filter: Option<String>,
    /// Skip `cargo clippy` (it is part of the default run and of CI).
    #[arg(long)]
    no_clippy: bool,
    /// Also show what passing tests printed (harness detail, daemon logs).
    #[arg(long)]
    verbose: bool,
}

pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    setup::run()?;
    let root = workspace_root();
    let cargo = cargo();

    eprintln!("test: building the ztunnel binary");
    cargo_step(
        Command::new(&cargo)
            .current_dir(&root)
            .args(["build", "--package", "ztunnel-user"]),
        "test: building ztunnel",
    )?;
    let binary = target_dir(&root).join("debug/ztunnel");
    anyhow::ensure!(
        binary.exists(),
        "the build produced no {}",
        binary.display()
    );

    if !args.no_clippy {
        eprintln!("test: cargo clippy --all-targets");
        cargo_step(
            Command::new(&cargo).current_dir(&root).args([
                "clippy",
                "--all-targets",
                "--",
                "--deny",
                "warnings",
            ]),
            "test: clippy",
        )
        .context("clippy found problems")?;
    }

    eprintln!(
        "test: building the tests, then unit tests and the end-to-end suite (as root), ZTUNNEL_BIN={}",
        binary.display()
    );
    let mut test = Command::new(&cargo);
    test.current_dir(&root)
        .args(["test", "--no-fail-fast"])
        .env("ZTUNNEL_BIN", &binary)
        .env("ZTUNNEL_PYTHON", setup::python_venv().join("bin/python"));
    // Passing tests' output is asked for: the end-to-end tests print what they measured on
    // lines starting `figures:`; the rest of it is left out (see `output`).
    test.args(["--", "--show-output"]);
    if let Some(filter) = &args.filter {
        test.arg(filter);
    }
    let mut output = TestOutput::new(args.verbose);
    let status = run_streaming(&mut test, "test: cargo test", |line| {
        if let Some(shown) = output.line(line) {
            println!("{shown}");
        }
    })?;
    print_figures(&output.figures);
    let totals = output.totals;
    println!(
        "test summary: {} passed, {} failed, {} ignored ({} s)",
        totals.passed,
        totals.failed,
        totals.ignored,
        started.elapsed().as_secs()
    );
    anyhow::ensure!(
        status.success() && totals.failed == 0,
        "some tests failed or did not build ({status}; see above)"
    );
    Ok(())
}

/// Runs a cargo command with its output passed through, failing if it fails.
fn cargo_step(command: &mut Command, doing: &str) -> anyhow::Result<()> {
    let status = run_streaming(command, doing, |line| println!("{line}"))?;
    anyhow::ensure!(status.success(), "{command:?} failed ({status})");
    Ok(())
}

/// The figures, one block per test under what the test expects them to show.
fn print_figures(lines: &[(String, String)]) {
    if lines.is_empty() {
        return;
    }
    println!("\n== figures measured by the end-to-end tests ==");
    let mut previous: Option<&str> = None;
    for (test, line) in lines {
        if previous != Some(test.as_str()) {
            println!("\n{test}\n  expected: {}", figures::expectation(test));
            previous = Some(test);
        }
        println!("  {}", line.trim_start());
    }
    println!();
}

fn target_dir(root: &std::path::Path) -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}
