//! Certificate rotation while a tunnel is open: the open tunnel keeps working, and new tunnels
//! are made with the new certificate (seen by the server in the client certificate's serial).

mod hbone_support;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use hbone_support::{Node, id, loopback, within};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsAcceptor;
use ztunnel::{
    hbone::{Answer, ConnectHandler, HboneRequest, server},
    identity::tls,
    proxy::WorkloadInfo,
};

/// An HBONE server that records each stream's client-certificate serial and joins the stream
/// to an echo application.
struct RecordingServer {
    app: SocketAddr,
    serials: Mutex<Vec<String>>,
}

impl ConnectHandler for RecordingServer {
    async fn handle(&self, request: HboneRequest, answer: Answer) {
        self.serials
            .lock()
            .unwrap()
            .push(request.peer.certificate_serial.clone());
        let Ok(mut upstream) = TcpStream::connect(self.app).await else {
            return answer.refuse(http::StatusCode::SERVICE_UNAVAILABLE);
        };
        if let Ok(tunnel) = answer.accept() {
            let _ = tunnel
                .copy_with(&mut upstream, ztunnel::proxy::limits::DEFAULT_IDLE_TIMEOUT)
                .await;
        }
    }
}

async fn roundtrip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).await.expect("write");
    let mut echoed = vec![0u8; message.len()];
    within("echo", stream.read_exact(&mut echoed))
        .await
        .expect("read echo");
    echoed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_open_tunnels_and_new_tunnels_use_the_new_certificate() {
    let server_info = WorkloadInfo::new(id("default", "recorder"), loopback(51, 3));
    let hbone = TcpListener::bind(SocketAddr::new(loopback(51, 3), 0))
        .await
        .unwrap();
    let hbone_port = hbone.local_addr().unwrap().port();
    let node = Node::start_with(51, |directory| {
        directory.with_hbone_workload_on_port(server_info.clone(), hbone_port)
    })
    .await;
    let app = TcpListener::bind(SocketAddr::new(loopback(51, 3), 0))
        .await
        .unwrap();
    let app_address = app.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = app.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    let recorder = Arc::new(RecordingServer {
        app: app_address,
        serials: Mutex::default(),
    });
    let acceptor = TlsAcceptor::from(
        tls::server_config(node.store.clone(), server_info.identity.clone()).unwrap(),
    );
    let handler = recorder.clone();
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = hbone.accept().await {
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            tokio::spawn(async move {
                let limits = ztunnel::proxy::ProxyLimits::default().serve_limits();
                let timeout = limits.preface_timeout;
                if let Ok((tls, peer)) = server::accept_tls(&acceptor, tcp, peer, timeout).await {
                    let _ = server::serve(tls, peer, handler, limits, std::future::pending()).await;
                }
            });
        }
    });
    let outbound = node.outbound_to(app_address).await;
    let client_identity = node.client.workload.identity.clone();

    let mut first = TcpStream::connect(outbound).await.unwrap();
    let before = roundtrip(&mut first, b"before rotation").await;
    let old_serial = node
        .store
        .certificate(&client_identity)
        .unwrap()
        .serial
        .clone();
    let new_serial = node.store.rotate(&client_identity).unwrap().serial.clone();
    let during = roundtrip(&mut first, b"first tunnel after rotation").await;
    let mut second = TcpStream::connect(outbound).await.unwrap();
    let fresh = roundtrip(&mut second, b"second tunnel").await;
    let still = roundtrip(&mut first, b"first tunnel still open").await;
    let serials = recorder.serials.lock().unwrap().clone();
    println!("set up: client {client_identity} → recording HBONE server {server_info:?}");
    println!(
        "observed: serial before rotation {old_serial}, after {new_serial}; server saw stream serials {serials:?}"
    );
    println!(
        "observed: first tunnel echoed {:?}, {:?}, {:?}; second tunnel echoed {:?}; pool opened {} connections",
        String::from_utf8_lossy(&before),
        String::from_utf8_lossy(&during),
        String::from_utf8_lossy(&still),
        String::from_utf8_lossy(&fresh),
        node.context.pool.connections_opened()
    );

    assert_ne!(
        old_serial, new_serial,
        "rotation must issue a new certificate"
    );
    assert_eq!(during, b"first tunnel after rotation");
    assert_eq!(still, b"first tunnel still open");
    assert_eq!(fresh, b"second tunnel");
    assert_eq!(
        serials,
        vec![old_serial, new_serial],
        "first tunnel on the old certificate, second on the new"
    );
}
