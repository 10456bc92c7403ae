//! `soak`: many concurrent TCP connections, for the load soak through the mesh.
//!
//! `soak serve <ip:port>`: an echo server (every byte read is written back), one task per
//! connection, until killed.
//!
//! `soak client <ip:port> <connections> <bytes>`: opens `connections` connections (at most
//! [`CONNECTING_AT_ONCE`] handshakes in flight), sends `bytes` on each and reads them back,
//! prints `{"phase":"open",...}` and holds every connection open. On SIGUSR1 it exchanges
//! `bytes` again on every held connection (they must still carry data), closes them all
//! (write shutdown, then wait for the echo side's EOF), prints `{"phase":"closed",...}` and
//! exits. Every line it prints is one JSON object; a connection that fails is counted, never
//! fatal, so the caller sees how many failed and why (the first error of each phase).

use std::{net::SocketAddr, sync::Arc, time::Instant};

use anyhow::Context;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

/// Connection handshakes in flight at once (keeps the listen backlogs from overflowing).
const CONNECTING_AT_ONCE: usize = 256;

fn main() -> anyhow::Result<()> {
    let arguments: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match arguments.get(1).map(String::as_str) {
        Some("serve") if arguments.len() == 3 => runtime.block_on(serve(arguments[2].parse()?)),
        Some("client") if arguments.len() == 5 => runtime.block_on(client(
            arguments[2].parse()?,
            arguments[3]
                .parse()
                .context("connections must be a number")?,
            arguments[4].parse().context("bytes must be a number")?,
        )),
        _ => anyhow::bail!(
            "usage: soak serve <ip:port> | soak client <ip:port> <connections> <bytes>"
        ),
    }
}

async fn serve(address: SocketAddr) -> anyhow::Result<()> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    let listener: TcpListener = socket.listen(4096)?;
    println!(
        "{}",
        json!({"phase": "listening", "address": address.to_string()})
    );
    loop {
        let (mut stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let (mut reader, mut writer) = stream.split();
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
            let _ = writer.shutdown().await;
        });
    }
}

async fn client(destination: SocketAddr, connections: usize, bytes: usize) -> anyhow::Result<()> {
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(CONNECTING_AT_ONCE));
    let mut opening = tokio::task::JoinSet::new();
    for index in 0..connections {
        let permits = permits.clone();
        opening.spawn(async move {
            let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
            let mut stream = TcpStream::connect(destination)
                .await
                .map_err(|error| format!("connect: {error}"))?;
            exchange(&mut stream, index, bytes).await?;
            Ok::<TcpStream, String>(stream)
        });
    }
    let mut held = Vec::with_capacity(connections);
    let mut open_errors = Errors::default();
    while let Some(joined) = opening.join_next().await {
        match joined
            .map_err(|error| error.to_string())
            .and_then(|result| result)
        {
            Ok(stream) => held.push(stream),
            Err(error) => open_errors.add(error),
        }
    }
    println!(
        "{}",
        json!({
            "phase": "open",
            "held": held.len(),
            "failed": open_errors.count,
            "first_error": open_errors.first,
            "seconds": started.elapsed().as_secs_f64(),
        })
    );

    usr1.recv().await;
    let closing = Instant::now();
    let mut closing_tasks = tokio::task::JoinSet::new();
    for (index, mut stream) in held.into_iter().enumerate() {
        closing_tasks.spawn(async move {
            exchange(&mut stream, index, bytes).await?;
            stream
                .shutdown()
                .await
                .map_err(|error| format!("shutdown: {error}"))?;
            let mut rest = Vec::new();
            stream
                .read_to_end(&mut rest)
                .await
                .map_err(|error| format!("waiting for EOF: {error}"))?;
            if rest.is_empty() {
                Ok(())
            } else {
                Err(format!("{} unexpected bytes before EOF", rest.len()))
            }
        });
    }
    let (mut closed, mut close_errors) = (0usize, Errors::default());
    while let Some(joined) = closing_tasks.join_next().await {
        match joined
            .map_err(|error| error.to_string())
            .and_then(|result| result)
        {
            Ok(()) => closed += 1,
            Err(error) => close_errors.add(error),
        }
    }
    println!(
        "{}",
        json!({
            "phase": "closed",
            "closed": closed,
            "failed": close_errors.count,
            "first_error": close_errors.first,
            "seconds": closing.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}

/// Sends `bytes` bytes derived from `index` and checks the echo is the same.
async fn exchange(stream: &mut TcpStream, index: usize, bytes: usize) -> Result<(), String> {
    let payload: Vec<u8> = (0..bytes)
        .map(|offset| ((index + offset) % 251) as u8)
        .collect();
    stream
        .write_all(&payload)
        .await
        .map_err(|error| format!("write: {error}"))?;
    let mut echoed = vec![0u8; bytes];
    stream
        .read_exact(&mut echoed)
        .await
        .map_err(|error| format!("read echo: {error}"))?;
    if echoed == payload {
        Ok(())
    } else {
        Err("the echo differs from what was sent".to_owned())
    }
}

#[derive(Default)]
struct Errors {
    count: usize,
    first: Option<String>,
}

impl Errors {
    fn add(&mut self, error: String) {
        self.count += 1;
        self.first.get_or_insert(error);
    }
}
