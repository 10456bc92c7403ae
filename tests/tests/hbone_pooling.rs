//! Pooling: tunnels to one destination share TLS connections, at most 100 open streams each,
//! so n tunnels use at most ceil(n/100) connections (counted by the server).

mod hbone_support;

use std::sync::atomic::Ordering;

use hbone_support::{Node, wait_until, within};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// An application that echoes every connection byte for byte until EOF.
fn spawn_echo(app: TcpListener) {
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = app.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
}

fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read a valid rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < 8192 {
            limit.rlim_cur = limit.rlim_max.min(8192);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sequential_tunnels_share_connections() {
    let node = Node::start(41).await;
    let app = node.app_listener().await;
    let outbound = node.outbound_to(app.local_addr().unwrap()).await;
    spawn_echo(app);
    let tunnels = 1000;
    for index in 0..tunnels {
        let mut client = TcpStream::connect(outbound).await.expect("connect");
        client.write_all(b"x").await.expect("write");
        client.shutdown().await.expect("shutdown");
        let mut echoed = Vec::new();
        within(
            &format!("tunnel {index} echo"),
            client.read_to_end(&mut echoed),
        )
        .await
        .expect("read");
        assert_eq!(echoed, b"x", "tunnel {index}");
    }
    let accepted = node
        .context
        .metrics
        .hbone_connections_accepted
        .load(Ordering::Relaxed);
    let opened = node.context.pool.connections_opened();
    let limit = (tunnels as u64).div_ceil(100);
    println!(
        "{tunnels} sequential tunnels: server accepted {accepted} TLS connections, client pool opened {opened}; limit {limit}"
    );
    assert!(
        accepted <= limit,
        "{accepted} TLS connections for {tunnels} tunnels"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_tunnels_use_two_connections() {
    raise_fd_limit();
    let node = Node::start(42).await;
    let app = node.app_listener().await;
    let outbound = node.outbound_to(app.local_addr().unwrap()).await;
    spawn_echo(app);
    let tunnels = 200;
    let mut clients = Vec::new();
    for index in 0..tunnels {
        let mut client = TcpStream::connect(outbound).await.expect("connect");
        client.write_all(&[index as u8]).await.expect("write");
        clients.push(client);
    }
    // Every tunnel is open at once: each has echoed its byte and none is closed yet.
    for (index, client) in clients.iter_mut().enumerate() {
        let mut byte = [0u8; 1];
        within(
            &format!("echo on concurrent tunnel {index}"),
            client.read_exact(&mut byte),
        )
        .await
        .expect("read");
        assert_eq!(byte[0], index as u8);
    }
    let open = node.context.drain.open_connections();
    let accepted = node
        .context
        .metrics
        .hbone_connections_accepted
        .load(Ordering::Relaxed);
    let limit = (tunnels as u64).div_ceil(100);
    println!(
        "{tunnels} concurrent tunnels open ({open} proxied connections tracked): server accepted {accepted} TLS connections; limit {limit}"
    );
    for client in &mut clients {
        client.shutdown().await.expect("shutdown");
    }
    drop(clients);
    wait_until("all tunnels to close", || {
        node.context.drain.open_connections() == 0
    })
    .await;
    assert!(
        accepted <= limit,
        "{accepted} TLS connections for {tunnels} concurrent tunnels"
    );
}

/// One echoed tunnel through `outbound`.
async fn echo_once(outbound: std::net::SocketAddr, what: &str) {
    let mut client = TcpStream::connect(outbound).await.expect("connect");
    client.write_all(b"y").await.expect("write");
    client.shutdown().await.expect("shutdown");
    let mut echoed = Vec::new();
    within(what, client.read_to_end(&mut echoed))
        .await
        .expect("read");
    assert_eq!(echoed, b"y", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_left_without_tunnels_is_released_after_the_idle_timeout() {
    let node = Node::start(43).await;
    node.context
        .pool
        .set_idle_timeout(std::time::Duration::from_millis(200));
    let app = node.app_listener().await;
    let outbound = node.outbound_to(app.local_addr().unwrap()).await;
    spawn_echo(app);
    echo_once(outbound, "first tunnel").await;
    let pooled_after_first = node.context.pool.pooled_connections().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut pooled = pooled_after_first;
    while pooled > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        pooled = node.context.pool.pooled_connections().await;
    }
    echo_once(outbound, "tunnel after the release").await;
    let opened = node.context.pool.connections_opened();
    println!(
        "pooled after the first tunnel: {pooled_after_first}; after the idle timeout: {pooled}; connections opened in all: {opened}"
    );
    assert_eq!(pooled, 0, "the idle connection was released");
    assert_eq!(opened, 2, "the next tunnel needed a new connection");
}
