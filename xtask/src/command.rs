//! Running external commands with errors that say what was run.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, ExitStatus, Output, Stdio},
    sync::{Mutex, mpsc},
    time::{Duration, Instant},
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

/// How long a command may print nothing before a "still running" line is printed.
const HEARTBEAT_AFTER: Duration = Duration::from_secs(20);

/// Runs `command`, passing each line of its standard output to `on_stdout` and its standard
/// error through to ours; while it prints nothing for [`HEARTBEAT_AFTER`] (a long compile or
/// link, a long test), prints `<doing>: still running (N s)` so the terminal never goes quiet
/// for long. Returns the exit status.
pub fn run_streaming(
    command: &mut Command,
    doing: &str,
    mut on_stdout: impl FnMut(&str),
) -> anyhow::Result<ExitStatus> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {command:?}"))?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let started = Instant::now();
    let last_output = Mutex::new(Instant::now());
    let touch = || {
        if let Ok(mut last) = last_output.lock() {
            *last = Instant::now();
        }
    };
    let (stop, stopped) = mpsc::channel::<()>();
    let status = std::thread::scope(|scope| {
        scope.spawn(|| {
            let Some(stderr) = stderr else { return };
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                touch();
            }
        });
        let (last_output, touch) = (&last_output, &touch);
        scope.spawn(move || {
            // Wakes every few seconds until `stop` is dropped.
            while let Err(mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(Duration::from_secs(5))
            {
                let silent = last_output.lock().map(|last| last.elapsed()).ok();
                if silent.is_some_and(|silent| silent >= HEARTBEAT_AFTER) {
                    eprintln!("{doing}: still running ({} s)", started.elapsed().as_secs());
                    touch();
                }
            }
        });
        if let Some(stdout) = stdout {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                on_stdout(&line);
                touch();
            }
        }
        let status = child.wait();
        drop(stop);
        status
    });
    status.with_context(|| format!("cannot wait for {command:?}"))
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

/// `line` without its ANSI escape sequences (colours in a daemon's or cargo's output).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for next in chars.by_ref() {
                if next.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
