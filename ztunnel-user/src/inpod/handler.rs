//! The seam between capture and proxying: what the in-pod listeners hand over, and to whom.
//!
//! The listeners know which pod a connection belongs to from the listener that accepted it,
//! never from packet addresses. A proxy (the plain [`super::forwarder::TcpForwarder`] today,
//! the HBONE proxy later) implements [`PodTrafficHandler`].

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
};

use tokio::net::TcpStream;

use super::{netns::Netns, socket_factory::PodSocketFactory};

/// Everything a handler knows about the pod a connection came from or goes to.
#[derive(Debug)]
pub struct PodContext {
    /// Kubernetes pod name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// The pod's IPs.
    pub ips: Vec<IpAddr>,
    /// Cookie of the pod's network namespace (the `pods` map key).
    pub netns_cookie: u64,
    /// The pod's network namespace.
    pub netns: Arc<Netns>,
    /// Makes sockets inside the pod's netns, marked so they are never captured.
    pub sockets: Arc<PodSocketFactory>,
}

/// The work a handler does for one connection; the listener spawns it.
pub type HandlerFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Receives the connections accepted by a pod's in-pod listeners.
pub trait PodTrafficHandler: Send + Sync + 'static {
    /// A connection the pod's application opened to `original_destination`, captured on 15001.
    /// The original destination comes from `getsockopt(SO_ORIGINAL_DST)`, cross-checked with
    /// the `orig_dst` map.
    fn outbound(
        &self,
        pod: Arc<PodContext>,
        stream: TcpStream,
        original_destination: SocketAddr,
    ) -> HandlerFuture;

    /// A plaintext connection to the pod, steered to 15006 by TC; `original_destination` is the
    /// accepted socket's local address (pod IP and the port the client asked for).
    fn inbound_plaintext(
        &self,
        pod: Arc<PodContext>,
        stream: TcpStream,
        original_destination: SocketAddr,
    ) -> HandlerFuture;

    /// A connection to the pod's HBONE port 15008 (not captured: the listener is really there).
    fn inbound_hbone(&self, pod: Arc<PodContext>, stream: TcpStream) -> HandlerFuture;
}
