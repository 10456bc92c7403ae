//! Accept loops over ordinary listeners: the in-pod listeners hand their sockets to the same
//! entry points; tests and benchmarks use these on loopback. Each loop stops accepting when
//! draining starts.

use std::{io, net::SocketAddr, sync::Arc};

use tokio::net::{TcpListener, TcpStream};

use super::{PodContext, ProxyContext, inbound, outbound, passthrough};

/// Finds the original destination of an accepted outbound connection.
pub trait OriginalDestination: Send + Sync + 'static {
    /// The destination the pod asked for.
    fn original_destination(&self, accepted: &TcpStream) -> io::Result<SocketAddr>;
}

/// Every connection goes to one fixed destination (tests and benchmarks).
#[derive(Debug, Clone, Copy)]
pub struct FixedDestination(pub SocketAddr);

impl OriginalDestination for FixedDestination {
    fn original_destination(&self, _accepted: &TcpStream) -> io::Result<SocketAddr> {
        Ok(self.0)
    }
}

/// Accepts outbound connections until draining starts.
pub async fn serve_outbound(
    context: Arc<ProxyContext>,
    pod: Arc<PodContext>,
    listener: TcpListener,
    destinations: Arc<dyn OriginalDestination>,
) {
    accept_loop(&context, listener, "outbound", |stream| {
        let (context, pod, destinations) = (context.clone(), pod.clone(), destinations.clone());
        async move {
            let destination = match destinations.original_destination(&stream) {
                Ok(destination) => destination,
                Err(error) => {
                    tracing::warn!(%error, "no original destination for an outbound connection; closing it");
                    return;
                }
            };
            if let Err(error) = outbound::handle(&context, &pod, stream, destination).await {
                tracing::debug!(%error, %destination, "outbound connection failed");
            }
        }
    })
    .await
}

/// Accepts HBONE connections until draining starts.
pub async fn serve_inbound_hbone(
    context: Arc<ProxyContext>,
    pod: Arc<PodContext>,
    listener: TcpListener,
) {
    accept_loop(&context, listener, "inbound HBONE", |stream| {
        let (context, pod) = (context.clone(), pod.clone());
        async move {
            let _ = inbound::serve_hbone_connection(context, pod, stream).await;
        }
    })
    .await
}

/// Accepts plaintext inbound connections until draining starts.
pub async fn serve_passthrough(
    context: Arc<ProxyContext>,
    pod: Arc<PodContext>,
    listener: TcpListener,
) {
    accept_loop(&context, listener, "inbound plaintext", |stream| {
        let (context, pod) = (context.clone(), pod.clone());
        async move {
            if let Err(error) = passthrough::handle(&context, &pod, stream).await {
                tracing::debug!(%error, "inbound plaintext connection failed");
            }
        }
    })
    .await
}

async fn accept_loop<F, Fut>(
    context: &ProxyContext,
    listener: TcpListener,
    name: &'static str,
    mut spawn: F,
) where
    F: FnMut(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let address = listener.local_addr().ok();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => { tokio::spawn(spawn(stream)); }
                Err(error) => tracing::warn!(listener = name, ?address, %error, "accept failed"),
            },
            () = context.drain.signaled() => {
                tracing::info!(listener = name, ?address, "draining: listener closed");
                return;
            }
        }
    }
}
