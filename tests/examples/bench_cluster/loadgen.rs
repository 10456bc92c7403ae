//! The load generator the benchmark runs inside pods (the driver re-executes itself as
//! `bench_cluster loadgen <mode> ...` through the cluster harness): an echo server, a
//! request/response client on one connection, a new-connection client, a connection holder, and
//! the reference relays (`ztunnel_e2e::relay`). Figures go to stdout as one JSON object;
//! latencies are recorded in an HDR histogram (µs).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use ztunnel::app::runtime::{self, RuntimeArgs};
use ztunnel_e2e::{echo, relay};

/// Runs one mode; `args` are the words after `loadgen`.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    if args.first().map(String::as_str) == Some("relay") {
        return relay(&args[1..]);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let word = |index: usize| -> anyhow::Result<&str> {
        args.get(index)
            .map(String::as_str)
            .with_context(|| format!("loadgen: argument {index} missing in {args:?}"))
    };
    let address: SocketAddr = word(1)?.parse().context("loadgen: bad address")?;
    match word(0)? {
        "serve" => runtime.block_on(serve(address)),
        "rr" => runtime.block_on(request_response(
            address,
            word(2)?.parse()?,
            word(3)?.parse()?,
        )),
        "connect" => runtime.block_on(connections(
            address,
            Duration::from_secs_f64(word(2)?.parse()?),
            word(3)?.parse()?,
        )),
        "hold" => runtime.block_on(hold(
            address,
            word(2)?.parse()?,
            Duration::from_secs_f64(word(3)?.parse()?),
        )),
        other => anyhow::bail!("loadgen: unknown mode {other}"),
    }
}

/// `relay <role> <listen> <onward> [<listen> <onward> ...]`: one reference relay per pair, on
/// the daemon's runtime (its default number of workers).
fn relay(args: &[String]) -> anyhow::Result<()> {
    let (role, pairs) = args
        .split_first()
        .context("loadgen relay: expected <role> <listen> <onward> ...")?;
    let role: relay::Role = role.parse()?;
    anyhow::ensure!(
        !pairs.is_empty() && pairs.len() % 2 == 0,
        "loadgen relay: expected pairs of <listen> <onward>, got {pairs:?}"
    );
    let workers = runtime::build(&RuntimeArgs {
        worker_threads: runtime::DEFAULT_WORKER_THREADS,
    })?;
    workers.block_on(async {
        let mut relays = tokio::task::JoinSet::new();
        for pair in pairs.chunks(2) {
            let listen: SocketAddr = pair[0]
                .parse()
                .context("loadgen relay: bad listen address")?;
            let onward: SocketAddr = pair[1]
                .parse()
                .context("loadgen relay: bad onward address")?;
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            println!("relaying {listen} to {onward} ({role:?})");
            relays.spawn(relay::serve(listener, onward, role));
        }
        while relays.join_next().await.is_some() {}
        anyhow::bail!("loadgen relay: every listener failed")
    })
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Echoes every byte back, for any number of connections.
async fn serve(address: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    println!("listening on {address}");
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(echo::echo_connection(stream));
    }
}

/// `count` round trips of `size` bytes on one connection (after 100 unrecorded ones).
async fn request_response(address: SocketAddr, size: usize, count: usize) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    stream.set_nodelay(true)?;
    let message = vec![0x5a_u8; size];
    let mut reply = vec![0u8; size];
    let mut latencies = histogram();
    for index in 0..count + 100 {
        let started = Instant::now();
        stream.write_all(&message).await?;
        stream.read_exact(&mut reply).await?;
        if index >= 100 {
            latencies.record(micros(started.elapsed()))?;
        }
    }
    println!(
        "{}",
        json!({
            "round_trips": count,
            "size": size,
            "p50_us": latencies.value_at_quantile(0.5),
            "p99_us": latencies.value_at_quantile(0.99),
            "mean_us": latencies.mean(),
        })
    );
    Ok(())
}

/// For `duration`, `concurrency` loops each connect, exchange one byte and close; the latency
/// is connect + exchange + close.
async fn connections(
    address: SocketAddr,
    duration: Duration,
    concurrency: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        workers.spawn(async move {
            let mut latencies = histogram();
            let mut failures = 0u64;
            while Instant::now() < deadline {
                let begun = Instant::now();
                match exchange_once(address).await {
                    Ok(()) => latencies.record(micros(begun.elapsed())).unwrap_or(()),
                    Err(_) => failures += 1,
                }
            }
            (latencies, failures)
        });
    }
    let mut latencies = histogram();
    let mut failures = 0;
    while let Some(result) = workers.join_next().await {
        let (worker, worker_failures) = result?;
        latencies.add(worker)?;
        failures += worker_failures;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "connections": latencies.len(),
            "failures": failures,
            "seconds": seconds,
            "per_second": latencies.len() as f64 / seconds,
            "p50_us": latencies.value_at_quantile(0.5),
            "p99_us": latencies.value_at_quantile(0.99),
        })
    );
    Ok(())
}

async fn exchange_once(address: SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    stream.write_all(b"x").await?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await?;
    stream.shutdown().await?;
    // Wait for the server's FIN, so the close is part of the measured exchange.
    let _ = stream.read(&mut byte).await?;
    Ok(())
}

/// Opens `count` connections, exchanges a byte on each (so every tunnel is established), says
/// `holding <count>` and keeps them open for `duration`.
async fn hold(address: SocketAddr, count: usize, duration: Duration) -> anyhow::Result<()> {
    let mut open = Vec::with_capacity(count);
    for index in 0..count {
        let mut stream = TcpStream::connect(address)
            .await
            .with_context(|| format!("connection {index} to {address}"))?;
        stream.write_all(b"x").await?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await?;
        open.push(stream);
    }
    println!("holding {}", open.len());
    tokio::time::sleep(duration).await;
    Ok(())
}
