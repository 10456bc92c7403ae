//! Steady test traffic and what became of each request: an [`EchoServer`] in a pod and a
//! [`Prober`] that sends one small request every 50 ms from another pod, for a bounded number of
//! rounds, each with its own deadline, and records every outcome with its time.
//!
//! ```no_run
//! # use ztunnel_e2e::{cluster::Cluster, traffic::{EchoServer, Prober, ProbeSpec}};
//! # fn f(cluster: &Cluster, client: &ztunnel_e2e::cluster::ClusterPod,
//! #      server: &ztunnel_e2e::cluster::ClusterPod) -> anyhow::Result<()> {
//! let echo = EchoServer::start(server.netns(), (server.ip, 7000).into())?;
//! let probe = Prober::start(cluster, client, "to-server", ProbeSpec::connections(echo.address(), 60))?;
//! // ... break something ...
//! let report = probe.finish()?;
//! println!("{}", report.figures());          // `figures: to-server sent=60 ok=60 ...`
//! assert_eq!(report.ok(), 60);
//! # Ok(()) }
//! ```
//!
//! The client is the `traffic-probe` binary of this crate, run as a process in the pod's netns
//! *and its node's cgroup* (the connect hooks only act on processes in that cgroup), so it is
//! captured exactly like an application. The process is killed on drop.

use std::{
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;

use crate::{
    cluster::{Cluster, ClusterPod},
    process::Process,
    wait::wait_until,
};

/// How often the prober sends a request, as the issue asks.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// The client's own deadline for each connect, write and read.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a prober does each round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeMode {
    /// A new TCP connection per round: connect, one line there and back, clean close.
    Connections,
    /// One connection for all rounds, one line there and back per round, clean close at the end
    /// (a long-lived connection; it stops at its first failure).
    Session,
}

/// What to probe and how much.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSpec {
    /// Where to connect (an [`EchoServer`], directly or through the mesh).
    pub target: SocketAddr,
    /// How many requests.
    pub rounds: u32,
    /// Time between request starts.
    pub interval: Duration,
    /// Deadline of each socket operation.
    pub timeout: Duration,
    /// New connections or one session.
    pub mode: ProbeMode,
}

impl ProbeSpec {
    /// `rounds` new connections to `target`, one every 50 ms, 2 s deadline each.
    pub fn connections(target: SocketAddr, rounds: u32) -> Self {
        Self {
            target,
            rounds,
            interval: PROBE_INTERVAL,
            timeout: PROBE_TIMEOUT,
            mode: ProbeMode::Connections,
        }
    }

    /// One connection to `target` carrying `rounds` requests, one every 50 ms.
    pub fn session(target: SocketAddr, rounds: u32) -> Self {
        Self {
            mode: ProbeMode::Session,
            ..Self::connections(target, rounds)
        }
    }

    /// The same with another per-operation deadline.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self { timeout, ..self }
    }

    /// The longest the probe can run: every round taking each of its three deadlines.
    fn worst_case(&self) -> Duration {
        self.interval * self.rounds + self.timeout * 3 * self.rounds + Duration::from_secs(5)
    }
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Echoed and closed cleanly.
    Ok,
    /// The connect was refused (RST, or the connect hook said no).
    Refused,
    /// A deadline passed.
    Timeout,
    /// The connection was reset after it was established.
    Reset,
    /// The peer closed before answering (or answered something else).
    Closed,
    /// Any other error.
    Error,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::Refused,
        Outcome::Timeout,
        Outcome::Reset,
        Outcome::Closed,
        Outcome::Error,
    ];

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|outcome| outcome.name() == text)
    }

    /// The name used in probe output and figures.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Timeout => "timeout",
            Outcome::Reset => "reset",
            Outcome::Closed => "closed",
            Outcome::Error => "error",
        }
    }
}

/// One request.
#[derive(Debug, Clone)]
pub struct ProbeRecord {
    /// 0-based round.
    pub round: u32,
    /// When it started.
    pub at: SystemTime,
    /// How long it took until it ended (either way).
    pub elapsed: Duration,
    /// How it ended.
    pub outcome: Outcome,
    /// The error, if any.
    pub detail: String,
}

/// Everything a prober recorded.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// The prober's label.
    pub label: String,
    /// Rounds it was asked for.
    pub planned: u32,
    /// One record per attempted round, in order.
    pub records: Vec<ProbeRecord>,
    /// Whether it attempted every round (a session stops at its first failure).
    pub done: bool,
}

impl ProbeReport {
    /// Whether it attempted a round before `instant` and its last round after it: a session
    /// that was open across `instant`.
    pub fn spans(&self, instant: std::time::SystemTime) -> bool {
        let first = self.records.first().map(|record| record.at);
        let last = self.records.last().map(|record| record.at);
        matches!((first, last), (Some(first), Some(last)) if first < instant && last > instant)
    }

    /// Requests sent.
    pub fn sent(&self) -> usize {
        self.records.len()
    }

    /// Requests with `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.records
            .iter()
            .filter(|record| record.outcome == outcome)
            .count()
    }

    /// Requests that succeeded.
    pub fn ok(&self) -> usize {
        self.count(Outcome::Ok)
    }

    /// Requests that did not.
    pub fn failed(&self) -> usize {
        self.sent() - self.ok()
    }

    /// The failed requests.
    pub fn failures(&self) -> Vec<&ProbeRecord> {
        self.records
            .iter()
            .filter(|record| record.outcome != Outcome::Ok)
            .collect()
    }

    /// The failures grouped by outcome and error, with their counts (for printing).
    pub fn failure_summary(&self) -> Vec<(String, usize)> {
        let mut groups: Vec<(String, usize)> = Vec::new();
        for record in self.failures() {
            let key = format!("{}: {}", record.outcome.name(), record.detail);
            match groups.iter_mut().find(|(known, _)| *known == key) {
                Some((_, count)) => *count += 1,
                None => groups.push((key, 1)),
            }
        }
        groups
    }

    /// The first successful request that started at or after `instant`.
    pub fn first_ok_after(&self, instant: SystemTime) -> Option<&ProbeRecord> {
        self.records
            .iter()
            .find(|record| record.outcome == Outcome::Ok && record.at >= instant)
    }

    /// The slowest request, however it ended.
    pub fn slowest(&self) -> Duration {
        self.records
            .iter()
            .map(|record| record.elapsed)
            .max()
            .unwrap_or_default()
    }

    /// One greppable line: `figures: <label> sent=… ok=… failed=… refused=… timeout=… reset=…
    /// closed=… error=… slowest_ms=… done=…`.
    pub fn figures(&self) -> String {
        let mut line = format!(
            "figures: {} sent={} ok={} failed={}",
            self.label,
            self.sent(),
            self.ok(),
            self.failed()
        );
        for outcome in Outcome::ALL.into_iter().skip(1) {
            line.push_str(&format!(" {}={}", outcome.name(), self.count(outcome)));
        }
        line.push_str(&format!(
            " slowest_ms={:.1} done={}",
            self.slowest().as_secs_f64() * 1000.0,
            self.done
        ));
        line
    }

    fn parse(label: &str, planned: u32, text: &str) -> Self {
        let mut records = Vec::new();
        let mut done = false;
        for line in text.lines() {
            if line == "done" {
                done = true;
                continue;
            }
            if let Some(record) = parse_record(line) {
                records.push(record);
            }
        }
        Self {
            label: label.to_owned(),
            planned,
            records,
            done,
        }
    }
}

fn parse_record(line: &str) -> Option<ProbeRecord> {
    let field = |name: &str| {
        line.split(' ')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
    };
    Some(ProbeRecord {
        round: field("round")?.parse().ok()?,
        at: UNIX_EPOCH + Duration::from_millis(field("at_ms")?.parse().ok()?),
        elapsed: Duration::from_micros(field("elapsed_us")?.parse().ok()?),
        outcome: Outcome::parse(field("outcome")?)?,
        detail: field("detail").unwrap_or_default().replace('_', " "),
    })
}

/// A running `traffic-probe`; killed on drop.
pub struct Prober {
    label: String,
    spec: ProbeSpec,
    log: PathBuf,
    process: Process,
}

impl Prober {
    /// Starts probing `spec.target` from `pod` (its netns and its node's cgroup).
    pub fn start(
        cluster: &Cluster,
        pod: &ClusterPod,
        label: &str,
        spec: ProbeSpec,
    ) -> anyhow::Result<Self> {
        let binary = probe_binary()?;
        let what = format!("probe-{label}");
        let log = cluster.env.scratch.join(format!("{}-{what}.log", pod.name));
        let argv = [
            binary.display().to_string(),
            match spec.mode {
                ProbeMode::Connections => "connect".into(),
                ProbeMode::Session => "session".into(),
            },
            spec.target.to_string(),
            spec.rounds.to_string(),
            spec.interval.as_millis().to_string(),
            spec.timeout.as_millis().to_string(),
            label.to_owned(),
        ];
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let process = cluster.spawn_in_pod(pod, &what, &argv)?;
        Ok(Self {
            label: label.to_owned(),
            spec,
            log,
            process,
        })
    }

    /// What it recorded so far.
    pub fn report(&self) -> ProbeReport {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        ProbeReport::parse(&self.label, self.spec.rounds, &text)
    }

    /// Waits until `count` requests succeeded in all (e.g. traffic is flowing before a fault).
    pub fn wait_ok(&self, count: usize) -> anyhow::Result<()> {
        wait_until(
            &format!("{count} successful requests of probe {}", self.label),
            self.spec.worst_case(),
            || (self.report().ok() >= count).then_some(()),
        )
        .map_err(|error| error.context(self.report().figures()))
    }

    /// Waits for the last round (bounded by the worst case of every deadline) and returns the
    /// report.
    pub fn finish(mut self) -> anyhow::Result<ProbeReport> {
        let status = self
            .process
            .wait_exit(self.spec.worst_case())
            .with_context(|| format!("probe {} did not end", self.label))?;
        let report = self.report();
        anyhow::ensure!(
            status.success(),
            "probe {} failed ({status}): {}",
            self.label,
            self.process.log_text()
        );
        Ok(report)
    }
}

/// The `traffic-probe` binary, built by cargo beside the test binaries (`target/<profile>/`).
fn probe_binary() -> anyhow::Result<PathBuf> {
    let test_binary = std::env::current_exe().context("cannot find the test binary")?;
    let profile_dir = test_binary
        .parent()
        .and_then(|deps| deps.parent())
        .context("the test binary is not under target/<profile>/deps")?;
    let binary = profile_dir.join("traffic-probe");
    anyhow::ensure!(
        binary.is_file(),
        "{} not found (cargo builds it for the ztunnel-e2e tests: run them through cargo)",
        binary.display()
    );
    Ok(binary)
}

/// An echo server inside a pod's netns: writes back every byte it reads, until end of stream.
/// Counts the connections it accepted. Stopped on drop.
pub struct EchoServer {
    address: SocketAddr,
    listener_fd: i32,
    accepted: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Listens on `address` inside the netns named `netns`; returns once it listens.
    pub fn start(netns: &str, address: SocketAddr) -> anyhow::Result<Self> {
        let netns_file = File::open(format!("/var/run/netns/{netns}"))
            .with_context(|| format!("no netns {netns}"))?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            // SAFETY: setns on this dedicated thread only, with an open netns file.
            if unsafe { libc::setns(netns_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = ready_tx.send(Err(std::io::Error::last_os_error()));
                return;
            }
            let listener = match TcpListener::bind(address) {
                Ok(listener) => listener,
                Err(error) => {
                    let _ = ready_tx.send(Err(error));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(listener.as_raw_fd()));
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                counter.fetch_add(1, Ordering::Relaxed);
                std::thread::spawn(move || {
                    // Bounded: a client that vanishes does not keep this thread forever.
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
                    let mut buffer = [0u8; 4096];
                    while let Ok(read @ 1..) = stream.read(&mut buffer) {
                        if stream.write_all(&buffer[..read]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let listener_fd = ready_rx
            .recv()
            .context("echo server thread ended before listening")?
            .with_context(|| format!("cannot listen on {address} in {netns}"))?;
        println!("echo server listening on {address} in {netns}");
        Ok(Self {
            address,
            listener_fd,
            accepted,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        // SAFETY: shutting down our own listening socket wakes the blocked accept, which then
        // fails and ends the thread; the fd is closed when the thread drops the listener.
        unsafe { libc::shutdown(self.listener_fd, libc::SHUT_RDWR) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
