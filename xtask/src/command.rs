//! Running external commands with errors that say what was run.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Command, Output, Stdio},
};

use anyhow::{Context, bail};

/// Runs `command`, streaming its output, and fails with the command line if it fails.
pub fn run_checked(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

/// Runs `command`, streaming its standard output through, and returns the lines that contain
/// `marker` whether or not the command succeeded; fails with the command line if it fails.
pub fn run_collecting(command: &mut Command, marker: &str) -> (anyhow::Result<()>, Vec<String>) {
    let mut child = match command.stdout(Stdio::piped()).spawn() {
        Ok(child) => child,
        Err(error) => {
            return (
                Err(error).context(format!("cannot start {command:?}")),
                vec![],
            );
        }
    };
    let mut collected = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        let mut out = std::io::stdout().lock();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // A closed terminal must not stop the run; the lines are still collected.
            let _ = writeln!(out, "{line}");
            if line.contains(marker) {
                collected.push(line);
            }
        }
    }
    let result = match child.wait() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(anyhow::anyhow!("{command:?} failed ({status})")),
        Err(error) => Err(error).context(format!("cannot wait for {command:?}")),
    };
    (result, collected)
}

/// Runs `command` capturing its output; the output is returned whatever the exit status.
pub fn output(command: &mut Command) -> anyhow::Result<Output> {
    command
        .output()
        .with_context(|| format!("cannot start {command:?}"))
}

/// Runs `command` and returns its standard output as text if it succeeded.
pub fn stdout_if_ok(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The cargo running this xtask (`$CARGO`), or `cargo` from `PATH`.
pub fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}
