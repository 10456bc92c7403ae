//! A plain TCP forwarder behind the in-pod listeners: connects to the original destination from
//! inside the pod's netns (bypass-marked) and copies bytes both ways. Enough to prove capture;
//! the HBONE proxy replaces it through the same [`PodTrafficHandler`] trait.

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpStream;

use super::handler::{HandlerFuture, PodContext, PodTrafficHandler};
use crate::socket::SocketFactory;

/// Forwards captured connections unchanged to where they were going.
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpForwarder;

impl TcpForwarder {
    async fn forward(
        pod: Arc<PodContext>,
        mut stream: TcpStream,
        destination: SocketAddr,
        direction: &'static str,
    ) {
        let socket = match pod.sockets.new_tcp_socket(destination.is_ipv6()) {
            Ok(socket) => socket,
            Err(error) => {
                tracing::warn!(pod = %pod.name, namespace = %pod.namespace, %destination, %error, direction, "cannot make a socket in the pod netns; closing");
                return;
            }
        };
        let mut upstream = match socket.connect(destination).await {
            Ok(upstream) => upstream,
            Err(error) => {
                tracing::info!(pod = %pod.name, namespace = %pod.namespace, %destination, %error, direction, "upstream connect failed; closing");
                return;
            }
        };
        match tokio::io::copy_bidirectional(&mut stream, &mut upstream).await {
            Ok((sent, received)) => {
                tracing::info!(pod = %pod.name, namespace = %pod.namespace, %destination, sent, received, direction, "connection closed")
            }
            Err(error) => {
                tracing::info!(pod = %pod.name, namespace = %pod.namespace, %destination, %error, direction, "connection ended with error")
            }
        }
    }
}

impl PodTrafficHandler for TcpForwarder {
    fn outbound(
        &self,
        pod: Arc<PodContext>,
        stream: TcpStream,
        original_destination: SocketAddr,
    ) -> HandlerFuture {
        Box::pin(Self::forward(pod, stream, original_destination, "outbound"))
    }

    fn inbound_plaintext(
        &self,
        pod: Arc<PodContext>,
        stream: TcpStream,
        original_destination: SocketAddr,
    ) -> HandlerFuture {
        Box::pin(Self::forward(pod, stream, original_destination, "inbound"))
    }

    fn inbound_hbone(&self, pod: Arc<PodContext>, stream: TcpStream) -> HandlerFuture {
        Box::pin(async move {
            tracing::info!(pod = %pod.name, namespace = %pod.namespace, peer = ?stream.peer_addr().ok(), "HBONE connection accepted; the plain TCP forwarder does not speak HBONE, closing");
        })
    }
}
