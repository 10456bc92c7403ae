//! The control plane process's main loop: TLS listener, the ADS service, and the fixture file
//! polled for changes (each change is a push).

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::{net::TcpListener, sync::watch};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use ztunnel::proto::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;

use super::{resources, server::Ads, tls};

/// How often the fixture file is checked for changes.
const FIXTURE_POLL: Duration = Duration::from_millis(100);

/// What the process serves.
pub struct ServeArgs {
    /// Where to listen (TLS, gRPC).
    pub listen: SocketAddr,
    /// The mesh root that signs the serving certificate.
    pub ca_dir: PathBuf,
    /// The fixture file (YAML), re-read when it changes.
    pub fixture: PathBuf,
    /// The bearer token clients must present, if any.
    pub token: Option<String>,
}

/// Serves until killed.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let tls = tls::server_config(&args.ca_dir, args.listen.ip())?;
    let text = std::fs::read_to_string(&args.fixture)
        .with_context(|| format!("cannot read {}", args.fixture.display()))?;
    let (snapshot, updates) = watch::channel(Arc::new(resources::snapshot(&text)?));
    tokio::spawn(watch_fixture(args.fixture.clone(), text, snapshot));
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let (connections, incoming) = tokio::sync::mpsc::channel(16);
    let acceptor = TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(stream) => {
                        let _ = connections
                            .send(Ok::<_, std::io::Error>(tls::TlsConnection(stream)))
                            .await;
                    }
                    Err(error) => println!("TLS handshake from {peer} failed: {error}"),
                }
            });
        }
    });
    println!("control plane listening on {}", args.listen);
    tonic::transport::Server::builder()
        .add_service(AggregatedDiscoveryServiceServer::new(Ads::new(
            updates, args.token,
        )))
        .serve_with_incoming(ReceiverStream::new(incoming))
        .await
        .context("the gRPC server failed")
}

async fn watch_fixture(
    path: PathBuf,
    mut last: String,
    snapshot: watch::Sender<Arc<resources::Snapshot>>,
) {
    loop {
        tokio::time::sleep(FIXTURE_POLL).await;
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if text == last {
            continue;
        }
        match resources::snapshot(&text) {
            Ok(resources) => {
                println!("fixture changed: pushing");
                snapshot.send_replace(Arc::new(resources));
            }
            Err(error) => println!("fixture {} unusable: {error:#}", path.display()),
        }
        last = text;
    }
}
