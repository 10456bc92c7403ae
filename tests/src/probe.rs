//! A request loop run inside a pod (the `probe` binary): a new connection and a small HTTP
//! request every interval, each recorded as ok / refused / reset / timeout / closed, and the
//! parsed report.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::{
    cluster::{Cluster, ClusterPod},
    process::Process,
    wait::wait_until,
};

/// One request of a probe run.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRequest {
    /// Its number, from 0.
    pub sequence: u32,
    /// When it started, in milliseconds since the Unix epoch.
    pub at_ms: u128,
    /// `ok`, or how it failed.
    pub outcome: String,
    /// How long it took.
    pub latency_ms: f64,
}

/// What a finished probe run saw.
#[derive(Debug, Clone, Default)]
pub struct ProbeReport {
    /// Every request, in order.
    pub requests: Vec<ProbeRequest>,
}

impl ProbeReport {
    /// Parses the probe's output lines (a run cut short parses too).
    pub fn parse(output: &str) -> anyhow::Result<Self> {
        let mut requests = Vec::new();
        for line in output.lines().filter(|line| line.starts_with("probe seq=")) {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
                    .with_context(|| format!("probe line without {name}: {line:?}"))
            };
            requests.push(ProbeRequest {
                sequence: field("seq")?.parse()?,
                at_ms: field("at_ms")?.parse()?,
                outcome: field("outcome")?.to_owned(),
                latency_ms: field("latency_ms")?.parse()?,
            });
        }
        Ok(Self { requests })
    }

    /// Requests sent.
    pub fn sent(&self) -> usize {
        self.requests.len()
    }

    /// Requests answered as expected.
    pub fn ok(&self) -> usize {
        self.requests.iter().filter(|r| r.outcome == "ok").count()
    }

    /// Requests that failed.
    pub fn failed(&self) -> Vec<&ProbeRequest> {
        self.requests.iter().filter(|r| r.outcome != "ok").collect()
    }

    /// The slowest request, in milliseconds.
    pub fn max_latency_ms(&self) -> f64 {
        self.requests
            .iter()
            .map(|r| r.latency_ms)
            .fold(0.0, f64::max)
    }

    /// How long requests kept failing after `event_ms`: from the event to the end of the first
    /// successful request after the last failure; zero when nothing failed after the event,
    /// `None` when nothing succeeded after the last failure.
    pub fn recovery_after(&self, event_ms: u128) -> Option<Duration> {
        let Some(last_failure) = self
            .requests
            .iter()
            .rfind(|r| r.at_ms >= event_ms && r.outcome != "ok")
        else {
            return Some(Duration::ZERO);
        };
        self.requests
            .iter()
            .find(|r| r.sequence > last_failure.sequence && r.outcome == "ok")
            .map(|r| {
                let end = r.at_ms as f64 + r.latency_ms;
                Duration::from_secs_f64((end - event_ms as f64).max(0.0) / 1000.0)
            })
    }

    /// The slowest request started at or after `event_ms`, in milliseconds.
    pub fn max_latency_after_ms(&self, event_ms: u128) -> f64 {
        self.requests
            .iter()
            .filter(|r| r.at_ms >= event_ms)
            .map(|r| r.latency_ms)
            .fold(0.0, f64::max)
    }
}

/// What a probe run does: `count` requests to `target`, one every `interval`, each within
/// `timeout`; a response must contain `expected`.
#[derive(Debug, Clone)]
pub struct ProbePlan<'a> {
    /// `ip:port`.
    pub target: &'a str,
    /// How many requests.
    pub count: u32,
    /// Cadence.
    pub interval: Duration,
    /// Per-request limit.
    pub timeout: Duration,
    /// Text a good response contains.
    pub expected: &'a str,
}

/// A probe running in a pod.
pub struct Probe {
    process: Process,
    count: u32,
}

impl Probe {
    /// Starts `plan` from `pod`. `binary` is the `probe` program (a test has it as
    /// `env!("CARGO_BIN_EXE_probe")`).
    pub fn start(
        binary: &str,
        cluster: &Cluster,
        pod: &ClusterPod,
        plan: &ProbePlan<'_>,
    ) -> anyhow::Result<Self> {
        let argv = [
            binary.to_owned(),
            plan.target.to_owned(),
            plan.count.to_string(),
            plan.interval.as_millis().to_string(),
            plan.timeout.as_millis().to_string(),
            plan.expected.to_owned(),
        ];
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let process = cluster.spawn_in_pod(pod, &format!("probe-{}", now_ms()), &argv)?;
        Ok(Self {
            process,
            count: plan.count,
        })
    }

    /// What it has reported so far.
    pub fn report(&self) -> anyhow::Result<ProbeReport> {
        ProbeReport::parse(&self.process.log_text())
    }

    /// Waits until at least `requests` requests have been made.
    pub fn wait_for(&self, requests: usize, timeout: Duration) -> anyhow::Result<()> {
        wait_until(&format!("{requests} probe requests"), timeout, || {
            (self.report().ok()?.sent() >= requests).then_some(())
        })
    }

    /// Waits for the run to end and returns its report.
    pub fn finish(mut self, timeout: Duration) -> anyhow::Result<ProbeReport> {
        let status = self.process.wait_exit(timeout)?;
        let report = self.report()?;
        anyhow::ensure!(
            status.success() && report.sent() == self.count as usize,
            "probe exited with {status} after {} of {} requests:\n{}",
            report.sent(),
            self.count,
            self.process.log_text()
        );
        Ok(report)
    }
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_millis())
        .unwrap_or(0)
}
