//! The one accept loop, for every listener the proxy has: a pod's in-pod listeners
//! ([`crate::inpod::pod_server`]) and the loopback listeners of tests and benchmarks. Each loop
//! stops accepting when draining starts (or when its task is dropped: a pod that leaves).
//!
//! What differs between listeners is pluggable: where the accepted connection's pod context comes
//! from ([`PodSource`]: fixed, or a pod server that re-resolves it when the mesh state changed)
//! and where an outbound connection's original destination comes from ([`OriginalDestination`]:
//! `SO_ORIGINAL_DST`, or fixed for tests).

use std::{io, net::SocketAddr, sync::Arc};

use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use ztunnel_common::constants::INBOUND_PLAINTEXT_PORT;

use super::{PodContext, ProxyContext, inbound, outbound, passthrough};

/// Where the pod context of an accepted connection comes from.
pub trait PodSource: Send + Sync + 'static {
    /// The context to serve a connection accepted now with; `None` refuses the connection (the
    /// source logged why).
    fn current(self: Arc<Self>) -> Option<Arc<PodContext>>;
}

/// A fixed pod: every connection gets the same context.
impl PodSource for PodContext {
    fn current(self: Arc<Self>) -> Option<Arc<PodContext>> {
        Some(self)
    }
}

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

/// `getsockopt(SO_ORIGINAL_DST)`, as any proxy asks: answered by our `cgroup/getsockopt`
/// program under eBPF capture (for processes under the cgroup it is attached to; minimum kernel
/// 5.15) and by conntrack under iptables capture. One lookup per connection. A socket that was
/// not redirected (someone dialled the listener itself) has no other destination than its own
/// address and is refused.
#[derive(Debug, Clone, Copy, Default)]
pub struct SocketOriginalDestination;

impl OriginalDestination for SocketOriginalDestination {
    fn original_destination(&self, accepted: &TcpStream) -> io::Result<SocketAddr> {
        let local = accepted.local_addr()?;
        let destination = asked_destination(accepted, local)?;
        if destination == local {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the connection was not redirected (it was dialled to the listener itself)",
            ));
        }
        Ok(destination)
    }
}

/// `SO_ORIGINAL_DST` of an accepted socket, in the family of its local address.
fn asked_destination(accepted: &TcpStream, local: SocketAddr) -> io::Result<SocketAddr> {
    let socket = SockRef::from(accepted);
    let answer = if local.is_ipv6() {
        socket.original_dst_v6()?
    } else {
        socket.original_dst_v4()?
    };
    answer
        .as_socket()
        .ok_or_else(|| io::Error::other("SO_ORIGINAL_DST answered with a non-IP address"))
}

/// The destination of a plaintext connection accepted on 15006. eBPF capture hands it over
/// unchanged (TC `bpf_sk_assign`, TPROXY semantics): the local address *is* the destination.
/// Only a connection whose local port is 15006 itself was rewritten (iptables REDIRECT), and
/// conntrack answers `SO_ORIGINAL_DST` for it.
fn inbound_destination(accepted: &TcpStream) -> io::Result<SocketAddr> {
    let local = accepted.local_addr()?;
    if local.port() != INBOUND_PLAINTEXT_PORT {
        return Ok(local);
    }
    asked_destination(accepted, local)
}

/// Accepts outbound connections until draining starts.
pub async fn serve_outbound(
    context: Arc<ProxyContext>,
    pod: Arc<dyn PodSource>,
    listener: TcpListener,
    destinations: Arc<dyn OriginalDestination>,
) {
    accept_loop(&context, listener, "outbound", |stream| {
        let (context, pod, destinations) = (context.clone(), pod.clone(), destinations.clone());
        async move {
            let destination = match destinations.original_destination(&stream) {
                Ok(destination) => destination,
                Err(error) => {
                    tracing::warn!(%error, peer = ?stream.peer_addr().ok(), "no original destination for an outbound connection; closing it");
                    return;
                }
            };
            let Some(pod) = pod.current() else {
                return;
            };
            tracing::info!(pod = %pod.workload.name, namespace = %pod.workload.namespace, peer = %display_peer(&stream), original_destination = %destination, "outbound connection captured");
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
    pod: Arc<dyn PodSource>,
    listener: TcpListener,
) {
    accept_loop(&context, listener, "inbound HBONE", |stream| {
        let (context, pod) = (context.clone(), pod.clone());
        async move {
            let Some(pod) = pod.current() else {
                return;
            };
            tracing::debug!(pod = %pod.workload.name, namespace = %pod.workload.namespace, peer = %display_peer(&stream), local_address = %display_local(&stream), "inbound HBONE connection accepted");
            if let Err(error) = inbound::serve_hbone_connection(context, pod, stream).await {
                tracing::debug!(%error, "inbound HBONE connection failed");
            }
        }
    })
    .await
}

/// Accepts plaintext inbound connections until draining starts.
pub async fn serve_passthrough(
    context: Arc<ProxyContext>,
    pod: Arc<dyn PodSource>,
    listener: TcpListener,
) {
    accept_loop(&context, listener, "inbound plaintext", |stream| {
        let (context, pod) = (context.clone(), pod.clone());
        async move {
            let destination = match inbound_destination(&stream) {
                Ok(destination) => destination,
                Err(error) => {
                    tracing::warn!(%error, peer = ?stream.peer_addr().ok(), "no original destination for an inbound plaintext connection; closing it");
                    return;
                }
            };
            let Some(pod) = pod.current() else {
                return;
            };
            tracing::info!(pod = %pod.workload.name, namespace = %pod.workload.namespace, peer = %display_peer(&stream), original_destination = %destination, "inbound plaintext connection captured");
            if let Err(error) = passthrough::handle_to(&context, &pod, stream, destination).await
            {
                tracing::debug!(%error, "inbound plaintext connection failed");
            }
        }
    })
    .await
}

/// An accepted socket's peer for a log line (`-` once the socket lost it).
fn display_peer(stream: &TcpStream) -> String {
    stream
        .peer_addr()
        .map_or_else(|_| "-".to_owned(), |peer| peer.to_string())
}

/// An accepted socket's local address for a log line.
fn display_local(stream: &TcpStream) -> String {
    stream
        .local_addr()
        .map_or_else(|_| "-".to_owned(), |local| local.to_string())
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
