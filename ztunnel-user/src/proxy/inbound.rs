//! Inbound HBONE: TLS connections to a pod's 15008 listener; each `CONNECT` stream is checked
//! (authority is this pod, workload known, policy allows) and joined to the application.

use std::{sync::Arc, time::Instant};

use http::StatusCode;
use tokio::net::TcpStream;

use super::{
    InboundConnection, PodContext, ProxyContext, ProxyError, WorkloadInfo,
    access_log::ConnectionRecord,
    connections::{Admission, TrackedConnection},
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
            peer_baggage: (!request.baggage.is_empty()).then(|| Box::new(request.baggage.clone())),
        };
        if let Some(claimed) = self.claimed_by_another_identity(&request) {
            let status = StatusCode::UNAUTHORIZED;
            self.context.metrics.answered(status);
            self.context
                .observer
                .source_mismatch(&request.peer.identity, &claimed.identity);
            tracing::warn!(peer = %request.peer.address, identity = %request.peer.identity,
                claimed_source = %record.source, claimed_workload = %claimed.name,
                claimed_identity = %claimed.identity, authority = %request.authority,
                status = status.as_u16(),
                "HBONE request refused: its source address belongs to a workload of another identity");
            answer.refuse(status);
            let error = ProxyError::NoRoute {
                destination: request.authority,
                reason: format!(
                    "answered {status}: source address {} belongs to {} ({}), not to the peer's identity",
                    record.source, claimed.name, claimed.identity
                ),
            };
            let _ = finish(
                &self.context,
                &record,
                Outcome::Failed(FailureKind::Denied, error),
            );
            return;
        }
        // Tracked before the check: a state replaced from here on is checked against it too.
        let tracked = self.context.connections.track(Admission {
            source_identity: Some(request.peer.identity.clone()),
            source: record.source,
            destination: request.authority,
            pod: self.pod.workload.clone(),
            via_waypoint: false,
        });
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
        let baggage = self.context.directory.baggage(request.authority.ip());
        let outcome = match answer.accept_with_baggage(baggage.as_deref()) {
            Ok(tunnel) => {
                let opened = self.context.opened(&record);
                let (transferred, result) = tunnel
                    .copy_until(
                        &mut upstream,
                        self.context.limits.idle_timeout,
                        tracked.revoked(),
                    )
                    .await;
                if revoked(&result, &tracked) {
                    self.context.closed_by_policy(&record);
                }
                // For the record, "sent" is what the remote client sent (tunnel → application).
                let transferred = Transferred {
                    sent: transferred.received,
                    received: transferred.sent,
                };
                Outcome::Closed(
                    opened,
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
    /// The workload of another identity that owns the source address this stream claims (the
    /// `forwarded` address, else the TCP peer), if any.
    ///
    /// A connection's identity is the peer's certificate, never an address: the sending ztunnel
    /// takes it from the pod whose listener accepted the connection. The source address it
    /// forwards is only a claim, and policy (`ipBlocks`), access logs and metrics read it; a pod
    /// that adds a neighbour's IP to its interface would otherwise travel under its own
    /// certificate with the neighbour's address. So the address must belong to a workload of the
    /// peer's identity, or to no known workload (a client outside the mesh, relayed by a
    /// gateway). Waypoints relay other workloads' connections and are exempt.
    fn claimed_by_another_identity(&self, request: &HboneRequest) -> Option<WorkloadInfo> {
        let claimed = request.forwarded_for.unwrap_or(request.peer.address);
        let owner = self.context.directory.workload(claimed.ip())?;
        if owner.identity == request.peer.identity
            || self.context.directory.is_waypoint(&request.peer.identity)
        {
            return None;
        }
        Some(owner)
    }

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
        // Istio's rule: a workload behind a waypoint takes HBONE only from the waypoint, so
        // its policy cannot be bypassed by a client that tunnels to the workload directly.
        let waypoint = self.context.directory.waypoint_identities(destination.ip());
        if let Some(waypoint) = &waypoint
            && !waypoint.contains(&request.peer.identity)
        {
            return Err((
                StatusCode::UNAUTHORIZED,
                "the workload is behind a waypoint and the connection did not come through it",
            ));
        }
        // The application sees the original client: the tunnel's source, or, when the tunnel
        // comes from the workload's waypoint, the client the waypoint forwards for (only the
        // waypoint's `forwarded` header is trusted for this).
        let upstream_source = match (&waypoint, request.forwarded_for) {
            (Some(_), Some(client)) => client.ip(),
            _ => request.peer.address.ip(),
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
        upstream::connect_from(&*self.pod.sockets, Some(upstream_source), destination)
            .await
            .map_err(|error| {
                tracing::debug!(%destination, %error, "application refused the connection");
                (StatusCode::SERVICE_UNAVAILABLE, "upstream refused")
            })
    }
}

/// Whether a copy ended because a new mesh state refused the connection.
pub(crate) fn revoked(result: &std::io::Result<()>, tracked: &TrackedConnection) -> bool {
    result
        .as_ref()
        .is_err_and(|error| error.kind() == std::io::ErrorKind::ConnectionAborted)
        && tracked.revocation().is_some()
}
