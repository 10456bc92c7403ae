//! `cargo xtask bench hbone` driver: one-stream throughput and request/response latency through
//! outbound → HBONE → inbound on loopback, against direct loopback TCP, interleaved over several
//! runs. Prints medians and ratios and writes them as JSON.
//!
//! Two reference paths run in the same rounds (`ztunnel_e2e::relay`): two plain TCP relays, and
//! two relays that seal and open AES-256-GCM records. They show how much of the gap to direct
//! any two-proxy design with user-space encryption pays on this machine.
//!
//! usage: bench_hbone [--runs N] [--megabytes M] [--round-trips K] [--out PATH]

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use ztunnel::{
    app::runtime::{self, RuntimeArgs},
    identity::{CertificateAuthority, CertificateStore, SpiffeId},
    proxy::{Drain, PodContext, ProxyContext, WorkloadInfo, directory::StaticDirectory, listeners},
    socket::{HostSocketFactory, PodAddressSockets},
};
use ztunnel_common::constants::HBONE_PORT;
use ztunnel_e2e::{echo, relay};

struct Options {
    runs: usize,
    megabytes: u64,
    round_trips: usize,
    out: PathBuf,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        runs: 5,
        megabytes: 1024,
        round_trips: 5000,
        out: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/bench/hbone.json"
        )),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--runs" => options.runs = value.parse()?,
            "--megabytes" => options.megabytes = value.parse()?,
            "--round-trips" => options.round_trips = value.parse()?,
            "--out" => options.out = value.into(),
            other => {
                bail!("unknown option {other} (expected --runs, --megabytes, --round-trips, --out)")
            }
        }
    }
    Ok(options)
}

/// Reads everything, then answers with one byte so the sender knows all arrived.
async fn sink(listener: TcpListener) {
    while let Ok((mut stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let mut buffer = vec![0u8; 256 * 1024];
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
            let _ = stream.write_all(b"k").await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Echoes each message back (messages are fixed-size per connection).
async fn echo(listener: TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(echo::echo_connection(stream));
    }
}

/// CPU seconds (user + system) this process has used so far: client, sink and both proxies.
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return f64::NAN;
    }
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// One throughput measurement.
struct Transfer {
    gbps: f64,
    /// Whole-process CPU seconds per GiB moved (both ends and, for HBONE, both proxies).
    cpu_per_gib: f64,
}

/// Gigabits per second for `bytes` sent through `to` and acknowledged.
async fn throughput(to: SocketAddr, bytes: u64) -> anyhow::Result<Transfer> {
    let cpu_before = process_cpu_seconds();
    let mut stream = TcpStream::connect(to).await?;
    stream.set_nodelay(true)?;
    let block = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let length = (bytes - sent).min(block.len() as u64) as usize;
        stream.write_all(&block[..length]).await?;
        sent += length as u64;
    }
    stream.shutdown().await?;
    let mut ack = Vec::new();
    stream.read_to_end(&mut ack).await?;
    let elapsed = start.elapsed();
    if ack != b"k" {
        bail!("sink did not acknowledge the transfer");
    }
    let gib = bytes as f64 / (1u64 << 30) as f64;
    Ok(Transfer {
        gbps: bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9,
        cpu_per_gib: (process_cpu_seconds() - cpu_before) / gib,
    })
}

/// p50 and p99 round-trip times in microseconds for `count` messages of `size` bytes.
async fn latency(to: SocketAddr, size: usize, count: usize) -> anyhow::Result<(f64, f64)> {
    let mut stream = TcpStream::connect(to).await?;
    stream.set_nodelay(true)?;
    let message = vec![7u8; size];
    let mut answer = vec![0u8; size];
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        stream.write_all(&message).await?;
        stream.read_exact(&mut answer).await?;
        samples.push(start.elapsed());
    }
    samples.sort();
    let at = |quantile: f64| {
        samples[((samples.len() as f64 - 1.0) * quantile) as usize].as_secs_f64() * 1e6
    };
    Ok((at(0.50), at(0.99)))
}

/// The median, leaving `values` in run order (the JSON's `raw` keeps that order).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// The ways to one application (sink or echo): each measured path's entry address.
struct Path {
    direct: SocketAddr,
    tunneled: SocketAddr,
    relays: relay::Pairs,
}

impl Path {
    /// Every path by name, in the order each run measures them.
    fn named(&self) -> [(&'static str, SocketAddr); 4] {
        [
            ("direct", self.direct),
            ("hbone", self.tunneled),
            ("relay", self.relays.plain),
            ("aes_relay", self.relays.sealed),
        ]
    }
}

async fn path(
    context: &Arc<ProxyContext>,
    client: &Arc<PodContext>,
    server_ip: std::net::IpAddr,
    direct: SocketAddr,
) -> anyhow::Result<Path> {
    let outbound = TcpListener::bind((client.workload.ips[0], 0)).await?;
    let tunneled = outbound.local_addr()?;
    tokio::spawn(listeners::serve_outbound(
        context.clone(),
        client.clone(),
        outbound,
        Arc::new(listeners::FixedDestination(direct)),
    ));
    let relays = relay::start_pairs(client.workload.ips[0], server_ip, direct).await?;
    Ok(Path {
        direct,
        tunneled,
        relays,
    })
}

fn main() -> anyhow::Result<()> {
    // The daemon's allocator settings and runtime, so the proxy half of this process behaves
    // as it does.
    ztunnel::app::memory::keep_freed_memory_for_reuse();
    runtime::build(&RuntimeArgs {
        worker_threads: runtime::DEFAULT_WORKER_THREADS,
    })?
    .block_on(measure())
}

async fn measure() -> anyhow::Result<()> {
    let options = options()?;
    let client_ip = "127.0.200.1".parse()?;
    let server_ip = "127.0.200.2".parse()?;
    let authority = Arc::new(CertificateAuthority::generate("cluster.local")?);
    let store = Arc::new(CertificateStore::with_authority(
        authority,
        "cluster.local",
        Duration::from_secs(3600),
    )?);
    let client_info =
        WorkloadInfo::new(SpiffeId::new("cluster.local", "bench", "client"), client_ip);
    let server_info =
        WorkloadInfo::new(SpiffeId::new("cluster.local", "bench", "server"), server_ip);
    let directory = StaticDirectory::new()
        .with_workload(client_info.clone(), true)
        .with_workload(server_info.clone(), true);
    let (_drain, watch) = Drain::new();
    let context = ProxyContext::new(Arc::new(directory), store.clone(), watch);
    // The client pod's HBONE connections leave from its address, as from a real pod's netns.
    let client = PodContext::new(client_info, Arc::new(PodAddressSockets(client_ip)), &store)?;
    let server = PodContext::new(server_info, Arc::new(HostSocketFactory), &store)?;
    let hbone = TcpListener::bind((server_ip, HBONE_PORT))
        .await
        .with_context(|| format!("bind {server_ip}:{HBONE_PORT}"))?;
    tokio::spawn(listeners::serve_inbound_hbone(
        context.clone(),
        server,
        hbone,
    ));
    let sink_listener = TcpListener::bind((server_ip, 0)).await?;
    let echo_listener = TcpListener::bind((server_ip, 0)).await?;
    let bulk = path(&context, &client, server_ip, sink_listener.local_addr()?).await?;
    let ping = path(&context, &client, server_ip, echo_listener.local_addr()?).await?;
    tokio::spawn(sink(sink_listener));
    tokio::spawn(echo(echo_listener));
    run(&options, &bulk, &ping).await
}

async fn run(options: &Options, bulk: &Path, ping: &Path) -> anyhow::Result<()> {
    let bytes = options.megabytes * 1024 * 1024;
    let mut results: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    // Warm up the pooled HBONE connection and the caches.
    for (_, address) in bulk.named() {
        throughput(address, 16 * 1024 * 1024).await?;
    }
    for run in 0..options.runs {
        for (name, address) in bulk.named() {
            let transfer = throughput(address, bytes).await?;
            results
                .entry(format!("throughput_gbps_{name}"))
                .or_default()
                .push(transfer.gbps);
            results
                .entry(format!("cpu_seconds_per_gib_{name}"))
                .or_default()
                .push(transfer.cpu_per_gib);
            println!(
                "run {run}: {name:9} throughput {:8.3} Gbit/s, {:.2} CPU-s/GiB",
                transfer.gbps, transfer.cpu_per_gib
            );
        }
        for size in [1usize, 1024] {
            // The aes relay seals one direction only; the plain relay is the latency reference.
            for (name, address) in ping.named().into_iter().take(3) {
                let (p50, p99) = latency(address, size, options.round_trips).await?;
                results
                    .entry(format!("latency_{size}b_p50_us_{name}"))
                    .or_default()
                    .push(p50);
                results
                    .entry(format!("latency_{size}b_p99_us_{name}"))
                    .or_default()
                    .push(p99);
                println!(
                    "run {run}: {name:9} {size:4}-byte round trip p50 {p50:8.1} µs p99 {p99:8.1} µs"
                );
            }
        }
    }
    let mut medians = serde_json::Map::new();
    for (key, values) in &results {
        medians.insert(key.clone(), serde_json::json!(median(values)));
    }
    let get = |key: &str| {
        medians
            .get(key)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(f64::NAN)
    };
    let ratio_throughput = get("throughput_gbps_hbone") / get("throughput_gbps_direct");
    let mut ratios = serde_json::Map::new();
    for (over, under) in [
        ("hbone", "direct"),
        ("relay", "direct"),
        ("aes_relay", "direct"),
        ("hbone", "aes_relay"),
    ] {
        ratios.insert(
            format!("throughput_{over}_over_{under}"),
            serde_json::json!(
                get(&format!("throughput_gbps_{over}")) / get(&format!("throughput_gbps_{under}"))
            ),
        );
    }
    for size in ["1b", "1024b"] {
        for quantile in ["p50", "p99"] {
            for over in ["hbone", "relay"] {
                let ratio = get(&format!("latency_{size}_{quantile}_us_{over}"))
                    / get(&format!("latency_{size}_{quantile}_us_direct"));
                ratios.insert(
                    format!("latency_{size}_{quantile}_{over}_over_direct"),
                    serde_json::json!(ratio),
                );
            }
        }
    }
    println!(
        "\nmedians over {} interleaved runs ({} MiB per throughput run, {} round trips per latency run):",
        options.runs, options.megabytes, options.round_trips
    );
    for (key, value) in &medians {
        println!("  {key:36} {:10.3}", value.as_f64().unwrap_or(f64::NAN));
    }
    for (key, value) in &ratios {
        println!("  {key:44} {:8.3}", value.as_f64().unwrap_or(f64::NAN));
    }
    println!(
        "  throughput target ≥ 0.35 of direct: {}",
        if ratio_throughput >= 0.35 {
            "met"
        } else {
            "NOT met"
        }
    );
    let report = serde_json::json!({
        "runs": options.runs,
        "megabytes_per_throughput_run": options.megabytes,
        "round_trips_per_latency_run": options.round_trips,
        "medians": medians,
        "ratios": ratios,
        "raw": results,
    });
    if let Some(parent) = options.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&options.out, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", options.out.display());
    Ok(())
}
