//! One round of figures for one scenario, and the ztunnels' CPU and memory from /proc.

use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use ztunnel_e2e::wait::wait_until;

use crate::{Plan, Scenario};

/// Runs the load generator in the scenario's client pod and parses its JSON line.
fn loadgen(scenario: &Scenario, args: &[&str]) -> anyhow::Result<Value> {
    let exe = std::env::current_exe()?.display().to_string();
    let mut argv = vec![exe.as_str(), "loadgen"];
    argv.extend_from_slice(args);
    let output = scenario.cluster.run_in_pod(scenario.client, &argv)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "{}: loadgen {args:?} failed ({}): {}",
        scenario.name,
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .with_context(|| format!("{}: loadgen {args:?} printed {stdout:?}", scenario.name))
}

fn number(value: &Value, key: &str) -> anyhow::Result<f64> {
    value
        .get(key)
        .and_then(Value::as_f64)
        .with_context(|| format!("no number {key} in {value}"))
}

/// p50 and p99 of `count` round trips of `size` bytes on one connection.
pub fn request_response(
    scenario: &Scenario,
    size: usize,
    count: usize,
) -> anyhow::Result<(f64, f64)> {
    let result = loadgen(
        scenario,
        &[
            "rr",
            &scenario.echo_address(),
            &size.to_string(),
            &count.to_string(),
        ],
    )?;
    Ok((number(&result, "p50_us")?, number(&result, "p99_us")?))
}

/// Every figure of one round.
pub fn round(scenario: &Scenario, plan: &Plan) -> anyhow::Result<Vec<(&'static str, f64)>> {
    let mut figures = Vec::new();

    let cpu_before = cpu_seconds(scenario)?;
    let iperf = iperf3(scenario, plan.iperf_seconds)?;
    let cpu_iperf = cpu_seconds(scenario)? - cpu_before;
    let bits_per_second = number(&iperf["end"]["sum_received"], "bits_per_second")?;
    let bytes = number(&iperf["end"]["sum_received"], "bytes")?;
    figures.push(("throughput_gbit_s", bits_per_second / 1e9));
    if scenario.proxies().next().is_some() && bytes > 0.0 {
        figures.push(("cpu_s_per_gib", cpu_iperf / (bytes / f64::from(1u32 << 30))));
    }

    let (p50, p99) = request_response(scenario, 1, plan.round_trips)?;
    figures.push(("rr_1b_p50_us", p50));
    figures.push(("rr_1b_p99_us", p99));
    let (p50, p99) = request_response(scenario, 1024, plan.round_trips)?;
    figures.push(("rr_1kib_p50_us", p50));
    figures.push(("rr_1kib_p99_us", p99));

    let cpu_before = cpu_seconds(scenario)?;
    let connect = loadgen(
        scenario,
        &[
            "connect",
            &scenario.echo_address(),
            &plan.connect_seconds.to_string(),
            &plan.connect_concurrency.to_string(),
        ],
    )?;
    let cpu_connect = cpu_seconds(scenario)? - cpu_before;
    let connections = number(&connect, "connections")?;
    figures.push(("connections_per_s", number(&connect, "per_second")?));
    figures.push(("connect_p50_us", number(&connect, "p50_us")?));
    figures.push(("connect_p99_us", number(&connect, "p99_us")?));
    figures.push(("connect_failures", number(&connect, "failures")?));
    if scenario.proxies().next().is_some() && connections > 0.0 {
        figures.push((
            "cpu_s_per_10k_connections",
            cpu_connect / (connections / 10_000.0),
        ));
    }
    Ok(figures)
}

/// One iperf3 run from the client pod to the server pod (JSON output).
fn iperf3(scenario: &Scenario, seconds: u32) -> anyhow::Result<Value> {
    let server = scenario.target.to_string();
    let output = scenario.cluster.run_in_pod(
        scenario.client,
        &["iperf3", "-c", &server, "-t", &seconds.to_string(), "-J"],
    )?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "{}: iperf3 failed ({}): {text}",
        scenario.name,
        output.status
    );
    serde_json::from_str(&text).with_context(|| format!("{}: iperf3 printed {text}", scenario.name))
}

/// utime + stime of the scenario's ztunnels (or relays), in seconds.
fn cpu_seconds(scenario: &Scenario) -> anyhow::Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0.0;
    for pid in scenario.proxies() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("{}: pid {pid} is gone", scenario.name))?;
        // Fields after the command name (which may hold spaces): state is field 3, utime 14.
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .with_context(|| format!("odd /proc/{pid}/stat: {stat}"))?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let utime: f64 = fields.get(11).context("no utime")?.parse()?;
        let stime: f64 = fields.get(12).context("no stime")?.parse()?;
        total += (utime + stime) / ticks;
    }
    Ok(total)
}

/// VmRSS of one process, in MiB.
fn rss(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("ztunnel pid {pid} is gone"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .context("no VmRSS")?
        .parse()?;
    Ok(kib / 1024.0)
}

/// Idle RSS of the client-side and server-side ztunnels (none for direct).
pub fn rss_mib(scenario: &Scenario) -> Vec<(&'static str, f64)> {
    let names = ["rss_idle_client_node_mib", "rss_idle_server_node_mib"];
    scenario
        .ztunnels
        .iter()
        .zip(names)
        .filter_map(|(pid, name)| rss(*pid).ok().map(|value| (name, value)))
        .collect()
}

/// The larger RSS of the two ztunnels while the client holds `count` open connections, each a
/// tunnel on the HBONE path.
pub fn rss_with_open_tunnels(scenario: &Scenario, count: usize) -> anyhow::Result<f64> {
    let exe = std::env::current_exe()?.display().to_string();
    let holder = scenario.cluster.spawn_in_pod(
        scenario.client,
        &format!("hold-{}", scenario.name),
        &[
            &exe,
            "loadgen",
            "hold",
            &scenario.echo_address(),
            &count.to_string(),
            "60",
        ],
    )?;
    let wanted = format!("holding {count}");
    wait_until(
        &format!("{}: {count} open tunnels", scenario.name),
        Duration::from_secs(60),
        || holder.log_text().contains(&wanted).then_some(()),
    )
    .with_context(|| format!("holder log: {}", holder.log_text()))?;
    let mut largest: f64 = 0.0;
    for pid in &scenario.ztunnels {
        let value = rss(*pid)?;
        println!(
            "{}: ztunnel pid {pid} RSS {value:.1} MiB with {count} open tunnels",
            scenario.name
        );
        largest = largest.max(value);
    }
    drop(holder);
    Ok(largest)
}
