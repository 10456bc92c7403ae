//! A full tunnel on loopback: client → outbound → HBONE (mTLS, h2 CONNECT) → inbound → server.

mod hbone_support;

use hbone_support::{Node, hex, receive_digest, send_pattern, within};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const GIB: u64 = 1024 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_each_way_arrives_intact() {
    let node = Node::start(11).await;
    let app = node.app_listener().await;
    let app_address = app.local_addr().unwrap();
    let outbound = node.outbound_to(app_address).await;
    println!("set up: app on {app_address}, outbound listener {outbound}; sending 1 GiB each way");

    let server = tokio::spawn(async move {
        let (stream, peer) = app.accept().await.expect("app accept");
        let (mut read, mut write) = stream.into_split();
        let received = tokio::spawn(async move { receive_digest(&mut read).await });
        let sent = send_pattern(&mut write, GIB, 7).await.expect("server send");
        (
            peer,
            sent,
            received.await.expect("join").expect("server receive"),
        )
    });
    let client = TcpStream::connect(outbound)
        .await
        .expect("connect outbound");
    let (mut read, mut write) = client.into_split();
    let received = tokio::spawn(async move { receive_digest(&mut read).await });
    let client_sent = send_pattern(&mut write, GIB, 3).await.expect("client send");
    let (client_received_count, client_received) =
        within("client to receive 1 GiB and EOF", received)
            .await
            .expect("join")
            .expect("client receive");
    let (peer, server_sent, (server_received_count, server_received)) =
        within("server to finish", server)
            .await
            .expect("server task");

    println!("observed: app peer {peer}");
    println!(
        "client → server: sent sha256 {} / received {} bytes sha256 {}",
        hex(&client_sent),
        server_received_count,
        hex(&server_received)
    );
    println!(
        "server → client: sent sha256 {} / received {} bytes sha256 {}",
        hex(&server_sent),
        client_received_count,
        hex(&client_received)
    );
    assert_eq!(server_received_count, GIB);
    assert_eq!(client_received_count, GIB);
    assert_eq!(
        client_sent, server_received,
        "client → server data corrupted"
    );
    assert_eq!(
        server_sent, client_received,
        "server → client data corrupted"
    );
    assert_eq!(node.context.pool.connections_opened(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_keeps_the_other_direction_open() {
    let node = Node::start(12).await;
    let app = node.app_listener().await;
    let outbound = node.outbound_to(app.local_addr().unwrap()).await;
    println!(
        "set up: app {}, outbound {outbound}",
        app.local_addr().unwrap()
    );

    let server = tokio::spawn(async move {
        let (mut stream, _) = app.accept().await.expect("accept");
        let mut request = Vec::new();
        // Reading to EOF proves the client's shutdown(write) crossed the tunnel.
        stream.read_to_end(&mut request).await.expect("read to EOF");
        stream
            .write_all(b"answer after your EOF")
            .await
            .expect("write after EOF");
        stream.shutdown().await.expect("shutdown");
        request
    });
    let mut client = TcpStream::connect(outbound).await.expect("connect");
    client.write_all(b"question").await.expect("write");
    client.shutdown().await.expect("half-close");
    let mut answer = Vec::new();
    within(
        "answer and EOF from server",
        client.read_to_end(&mut answer),
    )
    .await
    .expect("read");
    let request = within("server task", server).await.expect("server");
    println!(
        "observed: server got {:?} then EOF; client got {:?} then EOF",
        String::from_utf8_lossy(&request),
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(request, b"question");
    assert_eq!(answer, b"answer after your EOF");
}
