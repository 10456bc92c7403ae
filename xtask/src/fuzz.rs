//! `cargo xtask fuzz`: runs the libFuzzer targets in `fuzz/` (cargo-fuzz, nightly) for a bounded
//! time each and reports executions, coverage and crashes per target.
//!
//! Seeds are the committed `fuzz/corpus/<target>/`; what the fuzzer finds goes to
//! `target/fuzz-corpus/<target>/` (libFuzzer writes into the first corpus directory it is
//! given), crashes to `target/fuzz-artifacts/<target>/`, logs to `target/fuzz-logs/`.
//! Sanitizer: none. The targets are safe Rust, so AddressSanitizer adds build time and slows
//! every execution while finding nothing the borrow checker has not; debug assertions and
//! overflow checks stay on, so arithmetic overflow is a crash.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::Context;
use clap::Args;

use crate::{
    command::{run_checked, workspace_root},
    setup,
};

/// Every fuzz target, in `fuzz/fuzz_targets/`.
const TARGETS: &[&str] = &["config", "cni_stdin", "hbone_request", "policy"];

/// Options of `cargo xtask fuzz`.
#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Seconds to fuzz each target.
    #[arg(long, default_value_t = 30)]
    time: u64,
    /// Fuzz only this target (config, cni_stdin, hbone_request, policy); all of them if omitted.
    #[arg(long)]
    target: Option<String>,
}

/// What one target's run found.
struct Report {
    target: &'static str,
    executions: Option<u64>,
    coverage: Option<u64>,
    features: Option<u64>,
    corpus: usize,
    crashes: Vec<PathBuf>,
    seconds: f64,
    log: PathBuf,
}

pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    let targets: Vec<&'static str> = match &args.target {
        Some(name) => vec![
            TARGETS
                .iter()
                .copied()
                .find(|target| target == name)
                .with_context(|| format!("no fuzz target {name:?}; the targets are {TARGETS:?}"))?,
        ],
        None => TARGETS.to_vec(),
    };
    setup::install_cargo_fuzz()?;
    let root = workspace_root();
    let fuzz_dir = root.join("fuzz");
    let target_dir = root.join("target");
    let started = Instant::now();
    let object = crate::ebpf_object::dev_build_object()?;
    eprintln!("fuzz: building the targets (nightly, no sanitizer, debug assertions)");
    run_checked(&mut fuzz_command(&fuzz_dir, &target_dir, &object, "build"))
        .context("cannot build the fuzz targets")?;
    eprintln!("fuzz: built in {:.0} s", started.elapsed().as_secs_f64());

    let mut reports = Vec::new();
    for target in targets {
        reports.push(run_target(&root, target, &object, args.time)?);
    }
    println!(
        "\n{:<14} {:>8} {:>12} {:>7} {:>7} {:>7} {:>8}",
        "target", "seconds", "executions", "cov", "ft", "corpus", "crashes"
    );
    let show = |value: Option<u64>| value.map_or("?".to_owned(), |value| value.to_string());
    for report in &reports {
        println!(
            "{:<14} {:>8.1} {:>12} {:>7} {:>7} {:>7} {:>8}",
            report.target,
            report.seconds,
            show(report.executions),
            show(report.coverage),
            show(report.features),
            report.corpus,
            report.crashes.len()
        );
    }
    let crashed: Vec<&Report> = reports
        .iter()
        .filter(|report| !report.crashes.is_empty())
        .collect();
    for report in &crashed {
        for crash in &report.crashes {
            eprintln!(
                "fuzz: {} crashed on {} (reproduce: cd fuzz && cargo +nightly fuzz run {} {}; log {})",
                report.target,
                crash.display(),
                report.target,
                crash.display(),
                report.log.display()
            );
        }
    }
    anyhow::ensure!(
        crashed.is_empty(),
        "{} fuzz target(s) crashed",
        crashed.len()
    );
    Ok(())
}

/// `cargo +nightly fuzz <subcommand> -s none --debug-assertions --target-dir <target>/fuzz`,
/// with the dev build's kernel object (`object`) instead of a third compilation of it.
fn fuzz_command(fuzz_dir: &Path, target_dir: &Path, object: &Path, subcommand: &str) -> Command {
    // rustup's `cargo` from PATH (not $CARGO, the stable toolchain's own binary): only the
    // rustup proxy understands `+nightly`.
    let mut command = Command::new("cargo");
    command
        .current_dir(fuzz_dir)
        // The outer `cargo xtask` sets these for the stable toolchain; the fuzz build is nightly.
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env(crate::ebpf_object::VARIABLE, object)
        .args([
            "+nightly",
            "fuzz",
            subcommand,
            "-s",
            "none",
            "--debug-assertions",
        ])
        .arg("--target-dir")
        .arg(target_dir.join("fuzz"));
    command
}

fn run_target(
    root: &Path,
    target: &'static str,
    object: &Path,
    seconds: u64,
) -> anyhow::Result<Report> {
    let target_dir = root.join("target");
    let scratch_corpus = target_dir.join("fuzz-corpus").join(target);
    let artifacts = target_dir.join("fuzz-artifacts").join(target);
    let logs = target_dir.join("fuzz-logs");
    for dir in [&scratch_corpus, &artifacts, &logs] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let seeds = root.join("fuzz/corpus").join(target);
    let log = logs.join(format!("{target}.log"));
    let log_file =
        fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let known_crashes = files_in(&artifacts);
    eprintln!("fuzz: {target} for {seconds} s (log {})", log.display());
    let started = Instant::now();
    let status = fuzz_command(&root.join("fuzz"), &target_dir, object, "run")
        .arg(target)
        .arg(&scratch_corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .status()
        .with_context(|| format!("cannot start cargo fuzz run {target}"))?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    let crashes: Vec<PathBuf> = files_in(&artifacts)
        .into_iter()
        .filter(|path| !known_crashes.contains(path))
        .collect();
    if !status.success() && crashes.is_empty() {
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        anyhow::bail!(
            "cargo fuzz run {target} failed ({status}) without a crash artifact:\n{}",
            tail.join("\n")
        );
    }
    Ok(Report {
        target,
        executions: final_stat(&text, "stat::number_of_executed_units:"),
        coverage: last_progress(&text, "cov:"),
        features: last_progress(&text, "ft:"),
        corpus: files_in(&scratch_corpus).len() + files_in(&seeds).len(),
        crashes,
        seconds: started.elapsed().as_secs_f64(),
        log,
    })
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| path.is_file())
                .collect()
        })
        .unwrap_or_default()
}

/// `stat::number_of_executed_units: 12345` from `-print_final_stats=1`.
fn final_stat(log: &str, key: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix(key))
        .and_then(|value| value.trim().parse().ok())
}

/// The value after `key` on the last progress line (`#1234 DONE cov: 567 ft: 890 ...`).
fn last_progress(log: &str, key: &str) -> Option<u64> {
    log.lines()
        .rev()
        .filter(|line| line.starts_with('#'))
        .find_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|word| *word == key)?;
            words.next()?.parse().ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_figures() {
        let log = "#2\tINITED cov: 10 ft: 11 corp: 1/1b\n\
                   #4096\tpulse  cov: 120 ft: 300 corp: 40/2Kb\n\
                   #9000\tDONE   cov: 150 ft: 420 corp: 52/3Kb lim: 4 exec/s: 300\n\
                   Done 9000 runs in 31 second(s)\n\
                   stat::number_of_executed_units: 9000\n\
                   stat::peak_rss_mb:              60\n";
        assert_eq!(
            final_stat(log, "stat::number_of_executed_units:"),
            Some(9000)
        );
        assert_eq!(last_progress(log, "cov:"), Some(150));
        assert_eq!(last_progress(log, "ft:"), Some(420));
    }
}
