//! Retry on another endpoint: when the HBONE server the directory picks cannot be reached, the
//! node proxy marks it, counts a retry and opens the tunnel to the next pick before the client
//! notices; with no reachable server left it gives up after a bounded number of attempts.

mod hbone_support;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use hbone_support::{Node, id, loopback, within};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use ztunnel::proxy::{
    Directory, InboundConnection, OutboundRoute, ProxyContext, WorkloadInfo,
    listeners::{self, FixedDestination},
    metrics::ProxyMetrics,
    retry::MAX_CONNECT_ATTEMPTS,
};

/// A directory that hands out `hops` in turn as the HBONE server for every destination, and
/// records what it is told refused.
struct Rotation {
    hops: Vec<SocketAddr>,
    next: AtomicUsize,
    refused: Mutex<Vec<SocketAddr>>,
}

impl Directory for Rotation {
    fn route_outbound(&self, _source: &WorkloadInfo, destination: SocketAddr) -> OutboundRoute {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.hops.len();
        OutboundRoute::Hbone {
            hbone_address: self.hops[index],
            authority: destination,
            expected: vec![id("default", "echo")],
        }
    }

    fn workload(&self, _ip: IpAddr) -> Option<WorkloadInfo> {
        None
    }

    fn authorize(&self, _connection: &InboundConnection<'_>) -> bool {
        true
    }

    fn report_refused(&self, address: SocketAddr) {
        self.refused.lock().unwrap().push(address);
    }
}

/// An address on `127.0.<net>.<host>` where nothing listens (bound, then closed).
async fn dead_address(net: u8, host: u8) -> SocketAddr {
    let listener = TcpListener::bind(SocketAddr::new(loopback(net, host), 0))
        .await
        .expect("bind");
    listener.local_addr().expect("address")
}

/// The node's server pod behind an echo app; an outbound listener for its client pod whose
/// tunnels go to the HBONE servers `hops` names in turn.
async fn start(
    node: &Node,
    hops: Vec<SocketAddr>,
) -> (SocketAddr, Arc<ProxyContext>, Arc<Rotation>) {
    let app = node.app_listener().await;
    let app_address = app.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = app.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    let rotation = Arc::new(Rotation {
        hops,
        next: AtomicUsize::new(0),
        refused: Mutex::default(),
    });
    let context = ProxyContext::new(
        rotation.clone(),
        node.store.clone(),
        node.context.drain.clone(),
    );
    let listener = TcpListener::bind(SocketAddr::new(node.client.workload.ips[0], 0))
        .await
        .expect("bind outbound");
    let outbound = listener.local_addr().unwrap();
    tokio::spawn(listeners::serve_outbound(
        context.clone(),
        node.client.clone(),
        listener,
        Arc::new(FixedDestination(app_address)),
    ));
    (outbound, context, rotation)
}

async fn echo_through(outbound: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut client = TcpStream::connect(outbound).await?;
    client.write_all(b"ping").await?;
    client.shutdown().await?;
    let mut echoed = Vec::new();
    within("the echo", client.read_to_end(&mut echoed)).await?;
    Ok(echoed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_retried_on_the_next_one_before_the_client_notices() {
    let node = Node::start(61).await;
    let dead = dead_address(61, 3).await;
    let (outbound, context, rotation) = start(&node, vec![dead, node.hbone_address]).await;
    let echoed = echo_through(outbound).await;
    let retries = ProxyMetrics::get(&context.metrics.endpoint_retries);
    let refused = rotation.refused.lock().unwrap().clone();
    println!("echo {echoed:?}; retries {retries}; marked as refusing {refused:?}");
    assert_eq!(echoed.expect("echo through the retried tunnel"), b"ping");
    assert_eq!(retries, 1);
    assert_eq!(refused, vec![dead]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_endpoint_dead_the_client_is_closed_after_a_bounded_number_of_attempts() {
    let node = Node::start(62).await;
    let mut hops = Vec::new();
    for host in 3..8 {
        hops.push(dead_address(62, host).await);
    }
    let (outbound, context, rotation) = start(&node, hops.clone()).await;
    let echoed = echo_through(outbound).await;
    let retries = ProxyMetrics::get(&context.metrics.endpoint_retries);
    let refused = rotation.refused.lock().unwrap().clone();
    println!("echo {echoed:?}; retries {retries}; marked as refusing {refused:?}");
    assert!(
        echoed.is_err() || echoed.as_ref().is_ok_and(Vec::is_empty),
        "nothing came back: {echoed:?}"
    );
    assert_eq!(retries as usize, MAX_CONNECT_ATTEMPTS - 1);
    assert_eq!(refused, hops[..MAX_CONNECT_ATTEMPTS].to_vec());
}
