//! `cargo xtask test`: setup, lint, unit tests and the privileged end-to-end suite.

use std::{env, path::PathBuf, process::Command};

use anyhow::Context;
use clap::Args;

use crate::{
    command::{cargo, run_checked, run_collecting, workspace_root},
    setup,
};

/// Options of `cargo xtask test`. Cargo commands run on the workspace's default members: the
/// eBPF crate builds only for the BPF target, through `ztunnel-user/build.rs`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Run only the tests whose name contains this text.
    filter: Option<String>,
    /// Skip `cargo clippy` (it is part of the default run and of CI).
    #[arg(long)]
    no_clippy: bool,
}

pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    setup::run()?;
    let root = workspace_root();
    let cargo = cargo();

    eprintln!("test: building the ztunnel binary");
    run_checked(Command::new(&cargo).current_dir(&root).args([
        "build",
        "--package",
        "ztunnel-user",
    ]))?;
    let binary = target_dir(&root).join("debug/ztunnel");
    anyhow::ensure!(
        binary.exists(),
        "the build produced no {}",
        binary.display()
    );

    if !args.no_clippy {
        eprintln!("test: cargo clippy --all-targets");
        run_checked(Command::new(&cargo).current_dir(&root).args([
            "clippy",
            "--all-targets",
            "--",
            "--deny",
            "warnings",
        ]))
        .context("clippy found problems")?;
    }

    eprintln!(
        "test: unit tests and the end-to-end suite (as root), ZTUNNEL_BIN={}",
        binary.display()
    );
    let mut test = Command::new(&cargo);
    test.current_dir(&root)
        .args(["test", "--no-fail-fast"])
        .env("ZTUNNEL_BIN", &binary)
        .env("ZTUNNEL_PYTHON", setup::python_venv().join("bin/python"));
    // Passing tests' output is shown too: the end-to-end tests print what they measured on
    // lines starting `figures:`, gathered again at the end of the run.
    test.args(["--", "--show-output"]);
    if let Some(filter) = &args.filter {
        test.arg(filter);
    }
    let (result, figures) = run_collecting(&mut test, FIGURES_MARKER);
    if !figures.is_empty() {
        println!("\n== figures measured by the end-to-end tests ==");
        for line in &figures {
            println!("{}", line.trim_start());
        }
    }
    result.context("some tests failed (see above)")
}

/// What the end-to-end tests print in front of each measured figure.
const FIGURES_MARKER: &str = "figures:";

fn target_dir(root: &std::path::Path) -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}
