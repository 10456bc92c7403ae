//! Resource limits: a pod past its cap on open connections gets a reset (counted), and a
//! connection that moves nothing for the idle timeout is closed on both sides — through an HBONE
//! tunnel and through passthrough — while an active one is left alone.

mod hbone_support;

use std::{net::SocketAddr, time::Duration};

use hbone_support::{Node, loopback, wait_until, within};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use ztunnel::proxy::{
    ProxyLimits,
    metrics::{ProxyMetrics, RefusalReason},
};

/// Echoes every connection accepted on `listener` until its peer closes.
async fn echo_server(listener: TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(ztunnel_e2e::echo::echo_connection(stream));
    }
}

async fn roundtrip(stream: &mut TcpStream, message: &str) -> std::io::Result<String> {
    stream.write_all(message.as_bytes()).await?;
    let mut answer = vec![0u8; message.len()];
    stream.read_exact(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// What a read on a connection that should be closed returned.
fn closed(outcome: &std::io::Result<usize>) -> bool {
    matches!(outcome, Ok(0) | Err(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_per_pod_limit_are_reset_and_counted() {
    let limits = ProxyLimits {
        max_connections_per_pod: 3,
        ..ProxyLimits::default()
    };
    let node = Node::start_with_limits(81, limits, |directory| directory).await;
    let app = node.app_listener().await;
    let app_address = app.local_addr().expect("app address");
    tokio::spawn(echo_server(app));
    let outbound = node.outbound_to(app_address).await;
    println!("set up: limit 3 connections per pod, echo app on {app_address} through HBONE");

    let mut open = Vec::new();
    for index in 0..3 {
        let mut stream = TcpStream::connect(outbound).await.expect("connect");
        let answer = within(
            "an echo within the limit",
            roundtrip(&mut stream, &format!("hello {index}")),
        )
        .await
        .expect("echo within the limit");
        println!("connection {index}: echoed {answer:?}");
        open.push(stream);
    }
    // On loopback the reset can beat the client's own connect() to the finish line: both count.
    let over = async {
        let mut stream = TcpStream::connect(outbound).await?;
        let _ = stream.write_all(b"one too many").await;
        let mut buffer = [0u8; 64];
        stream.read(&mut buffer).await
    };
    let outcome = within("the fourth connection to be refused", over).await;
    let refused = node.context.metrics.refusals(RefusalReason::PerPodLimit);
    println!(
        "connection 3 (over the limit): read {outcome:?}; refusals counted {refused}; open slots {}",
        node.client.connections.open()
    );
    assert!(
        matches!(&outcome, Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset),
        "a connection past the limit must be reset, got {outcome:?}"
    );
    assert_eq!(refused, 1, "the refusal is counted once");
    assert_eq!(node.client.connections.open(), 3);

    drop(open.pop());
    wait_until("a closed connection to give its slot back", || {
        node.client.connections.open() == 2
    })
    .await;
    let mut again = TcpStream::connect(outbound).await.expect("connect");
    let answer = within(
        "an echo after a slot was freed",
        roundtrip(&mut again, "back under"),
    )
    .await
    .expect("echo after a slot was freed");
    println!("after closing one: a new connection echoed {answer:?}");
    assert_eq!(answer, "back under");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hbone_tunnel_is_closed_once_idle_but_not_while_active() {
    let idle_timeout = Duration::from_secs(2);
    let limits = ProxyLimits {
        idle_timeout,
        ..ProxyLimits::default()
    };
    let node = Node::start_with_limits(82, limits, |directory| directory).await;
    let app = node.app_listener().await;
    let app_address = app.local_addr().expect("app address");
    let outbound = node.outbound_to(app_address).await;
    println!("set up: idle timeout {idle_timeout:?}, app on {app_address} through HBONE");
    idle_then_closed(&node.context.metrics, app, outbound, idle_timeout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passthrough_connection_is_closed_once_idle_but_not_while_active() {
    let idle_timeout = Duration::from_secs(2);
    let limits = ProxyLimits {
        idle_timeout,
        ..ProxyLimits::default()
    };
    let node = Node::start_with_limits(83, limits, |directory| directory).await;
    // An address the directory does not know: outbound passes it through as plain TCP.
    let app = TcpListener::bind(SocketAddr::new(loopback(83, 9), 0))
        .await
        .expect("bind app outside the mesh");
    let app_address = app.local_addr().expect("app address");
    let outbound = node.outbound_to(app_address).await;
    println!("set up: idle timeout {idle_timeout:?}, app outside the mesh on {app_address}");
    idle_then_closed(&node.context.metrics, app, outbound, idle_timeout).await;
}

/// Keeps a connection busy for well past the idle timeout (it must survive), then leaves it
/// idle (both ends must see it close, and the close must be counted).
async fn idle_then_closed(
    metrics: &ProxyMetrics,
    app: TcpListener,
    outbound: SocketAddr,
    idle_timeout: Duration,
) {
    let mut client = TcpStream::connect(outbound).await.expect("connect");
    client.write_all(b"hello").await.expect("first write");
    let (mut server, _) = within("the app to accept", app.accept())
        .await
        .expect("accept");
    let active_for = idle_timeout * 5 / 2;
    let step = Duration::from_millis(100);
    let started = std::time::Instant::now();
    let mut exchanges = 0;
    let mut buffer = [0u8; 5];
    while started.elapsed() < active_for {
        within(
            "a byte through the busy connection",
            server.read_exact(&mut buffer),
        )
        .await
        .expect("app reads while active");
        server.write_all(b"pong!").await.expect("app writes");
        within(
            "the answer through the busy connection",
            client.read_exact(&mut buffer),
        )
        .await
        .expect("client reads while active");
        exchanges += 1;
        tokio::time::sleep(step).await;
        client.write_all(b"ping!").await.expect("client writes");
    }
    println!(
        "active: {exchanges} exchanges over {:?} (idle timeout {idle_timeout:?}): the connection stayed open",
        started.elapsed()
    );
    // Take the last ping off the wire, then go quiet.
    within("the last ping", server.read_exact(&mut buffer))
        .await
        .expect("app reads the last ping");
    let quiet_since = std::time::Instant::now();
    let mut scratch = [0u8; 16];
    let client_end = within(
        "the client to see the idle close",
        client.read(&mut scratch),
    )
    .await;
    let server_end = within("the app to see the idle close", server.read(&mut scratch)).await;
    let idle_closes = ProxyMetrics::get(&metrics.idle_timeouts);
    println!(
        "idle: client read {client_end:?}, app read {server_end:?} after {:?}; idle closes counted {idle_closes}",
        quiet_since.elapsed()
    );
    assert!(closed(&client_end), "the client's side must be closed");
    assert!(closed(&server_end), "the app's side must be closed");
    assert!(idle_closes >= 1, "the idle close must be counted");
}
