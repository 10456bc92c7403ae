//! Draining (what SIGTERM starts): listeners stop accepting, open tunnels keep working until
//! they end or the drain timeout passes, then the drain reports what was left.

mod hbone_support;

use std::time::{Duration, Instant};

use hbone_support::{DEADLINE, Node, within};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

async fn echo_app(node: &Node) -> std::net::SocketAddr {
    let app = node.app_listener().await;
    let address = app.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = app.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    address
}

/// Polls until connecting to `address` is refused.
async fn wait_until_refused(address: std::net::SocketAddr) {
    let start = Instant::now();
    while TcpStream::connect(address).await.is_ok() {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {address} to stop accepting"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_stops_accepting_and_lets_open_tunnels_finish() {
    let mut node = Node::start(71).await;
    let app = echo_app(&node).await;
    let outbound = node.outbound_to(app).await;
    let mut open = TcpStream::connect(outbound).await.unwrap();
    open.write_all(b"1").await.unwrap();
    let mut byte = [0u8; 1];
    open.read_exact(&mut byte).await.unwrap();

    let drain = node.drain.take().unwrap();
    let draining = tokio::spawn(drain.drain(DEADLINE));
    wait_until_refused(outbound).await;
    wait_until_refused(node.hbone_address).await;
    // The open tunnel still carries data both ways during the drain.
    open.write_all(b"2").await.unwrap();
    within("echo during drain", open.read_exact(&mut byte))
        .await
        .unwrap();
    let during = byte[0];
    open.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within("tunnel end", open.read_to_end(&mut rest))
        .await
        .unwrap();
    let left = within("drain to finish", draining).await.unwrap();
    println!(
        "observed: listeners {outbound} and {} refused new connections; open tunnel echoed {:?} during drain; drain left {left} connections",
        node.hbone_address, during as char
    );
    assert_eq!(during, b'2');
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_gives_up_on_tunnels_still_open_at_the_timeout() {
    let mut node = Node::start(72).await;
    let app = echo_app(&node).await;
    let outbound = node.outbound_to(app).await;
    let mut open = TcpStream::connect(outbound).await.unwrap();
    open.write_all(b"1").await.unwrap();
    let mut byte = [0u8; 1];
    open.read_exact(&mut byte).await.unwrap();
    let timeout = Duration::from_millis(200);
    let left = node.drain.take().unwrap().drain(timeout).await;
    println!(
        "observed: drain with a {timeout:?} timeout and one idle open tunnel left {left} connections (the outbound and inbound halves)"
    );
    assert_eq!(left, 2);
}
