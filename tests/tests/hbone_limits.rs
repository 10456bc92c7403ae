//! Resource limits: a pod past its cap on open connections gets a reset (counted), and a
//! connection that moves nothing for the idle timeout is closed on both sides — through an HBONE
//! tunnel and through passthrough — while an active one is left alone. A pooled HBONE
//! connection whose server stops answering keep-alive PINGs is closed and counted.

mod hbone_support;

use std::{net::SocketAddr, time::Duration};

use hbone_support::{Node, id, loopback, wait_until, within};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use ztunnel::{
    hbone::Keepalive,
    proxy::{
        ProxyLimits, WorkloadInfo,
        metrics::{HandshakeSide, HboneClose, ProxyMetrics, RefusalReason},
    },
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

/// Relays every connection accepted on `listener` to `onward`, from the client's own address (no
/// NAT: the server checks that a stream's source is the connection's); while `frozen` holds,
/// whatever it reads is held back (a peer that vanished without a FIN, as a node that lost
/// power).
async fn freezable_relay(listener: TcpListener, onward: SocketAddr, frozen: watch::Receiver<bool>) {
    async fn copy(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut frozen: watch::Receiver<bool>,
    ) {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(count) = from.read(&mut buffer).await {
            if count == 0 || frozen.wait_for(|frozen| !*frozen).await.is_err() {
                return;
            }
            if to.write_all(&buffer[..count]).await.is_err() {
                return;
            }
        }
    }
    while let Ok((client, peer)) = listener.accept().await {
        let connected = async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(peer.ip(), 0))?;
            socket.connect(onward).await
        };
        let Ok(server) = connected.await else {
            continue;
        };
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        tokio::spawn(copy(client_read, server_write, frozen.clone()));
        tokio::spawn(copy(server_read, client_write, frozen.clone()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_whose_server_stops_answering_pings_is_closed_and_counted() {
    let keepalive = Keepalive {
        ping_interval: Duration::from_millis(200),
        ping_timeout: Duration::from_millis(500),
        ..Keepalive::default()
    };
    let limits = ProxyLimits {
        keepalive,
        ..ProxyLimits::default()
    };
    // The client pool reaches the server pod's HBONE listener through a relay on its address.
    let relay = TcpListener::bind(SocketAddr::new(loopback(84, 2), 0))
        .await
        .expect("bind relay");
    let relay_address = relay.local_addr().expect("relay address");
    let server = WorkloadInfo::new(id("default", "echo"), loopback(84, 2));
    let node = Node::start_with_limits(84, limits, |directory| {
        directory.with_hbone_workload_on_port(server, relay_address.port())
    })
    .await;
    let (freeze, frozen) = watch::channel(false);
    tokio::spawn(freezable_relay(relay, node.hbone_address, frozen));
    let app = node.app_listener().await;
    let app_address = app.local_addr().expect("app address");
    tokio::spawn(echo_server(app));
    let outbound = node.outbound_to(app_address).await;
    println!(
        "set up: PINGs every {:?} answered within {:?}; HBONE to {} through a relay on {relay_address}",
        keepalive.ping_interval, keepalive.ping_timeout, node.hbone_address
    );

    let mut tunnel = TcpStream::connect(outbound).await.expect("connect");
    let answer = within(
        "an echo before the freeze",
        roundtrip(&mut tunnel, "before"),
    )
    .await
    .expect("echo before the freeze");
    let pool = &node.context.pool;
    println!(
        "before the freeze: echoed {answer:?}; connections opened {}",
        pool.connections_opened()
    );
    freeze.send_replace(true);
    let frozen_at = std::time::Instant::now();
    let metrics = &node.context.metrics;
    wait_until(
        "the pool to close the connection whose PINGs go unanswered",
        || metrics.hbone_closes(HandshakeSide::Outbound, HboneClose::PingTimeout) == 1,
    )
    .await;
    let mut scratch = [0u8; 16];
    let tunnel_end = within("the tunnel on it to end", tunnel.read(&mut scratch)).await;
    println!(
        "frozen: the pool closed the connection after {:?} (PING interval + timeout {:?}); the tunnel on it read {tunnel_end:?}",
        frozen_at.elapsed(),
        keepalive.ping_interval + keepalive.ping_timeout
    );
    freeze.send_replace(false);
    let mut again = TcpStream::connect(outbound).await.expect("connect");
    let answer = within("an echo after the freeze", roundtrip(&mut again, "after"))
        .await
        .expect("echo after the freeze");
    println!(
        "after: echoed {answer:?}; connections opened {}",
        pool.connections_opened()
    );
    assert!(
        closed(&tunnel_end),
        "the tunnel on the dead connection must end"
    );
    assert_eq!(answer, "after");
    assert_eq!(
        pool.connections_opened(),
        2,
        "the new tunnel goes on a new connection"
    );
}
