//! Inbound HBONE: TLS connections to a pod's 15008 listener; each `CONNECT` stream is checked
//! (authority is this pod, workload known, policy allows) and joined to the application.

use std::{sync::Arc, time::Instant};

use http::StatusCode;
use tokio::net::TcpStream;

use super::{
    InboundConnection, PodContext, ProxyContext, ProxyError,
    access_log::ConnectionRecord,
    metrics::HandshakeSide,
    observer::FailureKind,
    outbound::{Outcome, finish},
    upstream,
};
use crate::hbone::{
    Answer, ConnectHandler, HboneError, HboneRequest, Transferred,
    server::{accept_tls, serve},
};

/// Serves one accepted TCP connection on a pod's HBONE listener until it closes (or drains).
/// Handshake failures are logged with their reason and counted; they never stop the listener.
pub async fn serve_hbone_connection(
    context: Arc<ProxyContext>,
    pod: Arc<PodContext>,
    tcp: TcpStream,
) -> Result<(), HboneError> {
    let peer_address = match tcp.peer_addr() {
        Ok(address) => address,
        Err(error) => {
            tracing::debug!(%error, "HBONE connection gone before the handshake");
            return Ok(());
        }
    };
    let handshake_timeout = context.limits.handshake_timeout;
    let (tls, peer) = match accept_tls(&pod.acceptor, tcp, peer_address, handshake_timeout).await {
        Ok(accepted) => accepted,
        Err(error) => {
            let reason = error.reason();
            context.identity_failure(HandshakeSide::Inbound, reason);
            tracing::warn!(peer = %peer_address, pod = %pod.workload.identity, reason, %error,
                "HBONE connection refused");
            return Err(error);
        }
    };
    context
        .metrics
        .hbone_connections_accepted
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::debug!(peer = %peer_address, identity = %peer.identity, serial = %peer.certificate_serial,
        "HBONE connection accepted");
    let handler = Arc::new(InboundHandler {
        context: context.clone(),
        pod,
    });
    let drain = context.drain.clone();
    let result = serve(tls, peer, handler, handshake_timeout, async move {
        drain.signaled().await
    })
    .await;
    if let Err(error) = &result {
        tracing::info!(peer = %peer_address, reason = error.reason(), %error, "HBONE connection closed");
    }
    result
}

/// Answers `CONNECT` streams for one pod.
struct InboundHandler {
    context: Arc<ProxyContext>,
    pod: Arc<PodContext>,
}

impl ConnectHandler for InboundHandler {
    async fn handle(&self, request: HboneRequest, answer: Answer) {
        let _guard = self.context.drain.track();
        let record = ConnectionRecord {
            direction: "inbound",
            source: request.forwarded_for.unwrap_or(request.peer.address),
            destination: request.authority,
            source_identity: Some(request.peer.identity.clone()),
            destination_identity: Some(self.pod.workload.identity.clone()),
            mutual_tls: true,
            via: Some(request.authority),
            started: Instant::now(),
        };
        let mut upstream = match self.admit(&request).await {
            Ok(upstream) => upstream,
            Err((status, why)) => {
                self.context.metrics.answered(status);
                tracing::info!(peer = %request.peer.address, identity = %request.peer.identity,
                    authority = %request.authority, status = status.as_u16(), why, "HBONE request refused");
                answer.refuse(status);
                let kind = if status == StatusCode::UNAUTHORIZED {
                    FailureKind::Denied
                } else {
                    FailureKind::Connect
                };
                let error = ProxyError::NoRoute {
                    destination: request.authority,
                    reason: format!("answered {status}: {why}"),
                };
                let _ = finish(&self.context, &record, Outcome::Failed(kind, error));
                return;
            }
        };
        self.context.metrics.answered(StatusCode::OK);
        let outcome = match answer.accept() {
            Ok(tunnel) => {
                self.context.opened(&record);
                let (transferred, result) = tunnel
                    .copy_with(&mut upstream, self.context.limits.idle_timeout)
                    .await;
                // For the record, "sent" is what the remote client sent (tunnel → application).
                let transferred = Transferred {
                    sent: transferred.received,
                    received: transferred.sent,
                };
                Outcome::Closed(
                    transferred,
                    result.map_err(|source| ProxyError::Interrupted {
                        address: request.authority,
                        source,
                    }),
                )
            }
            Err(error) => Outcome::Failed(
                FailureKind::Connect,
                ProxyError::Hbone(HboneError::H2 {
                    peer: request.peer.address,
                    source: error,
                }),
            ),
        };
        let _ = finish(&self.context, &record, outcome);
    }
}

impl InboundHandler {
    /// Decides a stream: the upstream connection, or the status to refuse it with.
    async fn admit(&self, request: &HboneRequest) -> Result<TcpStream, (StatusCode, &'static str)> {
        let destination = request.authority;
        if !self.pod.owns(destination.ip()) {
            return Err((
                StatusCode::BAD_REQUEST,
                "authority is not an address of this pod",
            ));
        }
        let Some(workload) = self.context.directory.workload(destination.ip()) else {
            return Err((StatusCode::SERVICE_UNAVAILABLE, "no such workload"));
        };
        let connection = InboundConnection {
            source_identity: Some(&request.peer.identity),
            source: request.forwarded_for.unwrap_or(request.peer.address),
            destination,
            destination_workload: &workload,
        };
        if !self.context.directory.authorize(&connection) {
            return Err((StatusCode::UNAUTHORIZED, "denied by policy"));
        }
        upstream::connect_from(
            &*self.pod.sockets,
            Some(request.peer.address.ip()),
            destination,
        )
        .await
        .map_err(|error| {
            tracing::debug!(%destination, %error, "application refused the connection");
            (StatusCode::SERVICE_UNAVAILABLE, "upstream refused")
        })
    }
}
