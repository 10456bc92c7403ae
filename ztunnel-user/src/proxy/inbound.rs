//! Inbound HBONE: TLS connections to a pod's 15008 listener; each `CONNECT` stream is checked
//! (source credited, authority is this pod and not one of ztunnel's own ports, workload known,
//! policy allows) and joined to the application.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use http::StatusCode;
use tokio::net::TcpStream;
use ztunnel_common::constants::{
    ADMIN_PORT, HBONE_PORT, INBOUND_PLAINTEXT_PORT, METRICS_PORT, OUTBOUND_PORT, READINESS_PORT,
};

use super::{
    InboundConnection, PodContext, ProxyContext, ProxyError, WorkloadInfo,
    access_log::{ConnectionRecord, Direction},
    connections::{Admission, TrackedConnection},
    forwarded::credited_source,
    metrics::{HandshakeSide, HboneClose, RefusalReason},
    observer::FailureKind,
    outbound::{Outcome, finish},
    upstream,
};
use crate::hbone::{
    Answer, ConnectHandler, ConnectionEnd, HboneError, HboneRequest, Transferred,
    server::{accept_tls, serve},
};

/// ztunnel's own ports in a pod. A `CONNECT` to one of them would be a loop (or HBONE inside
/// HBONE); the upstream socket, bound to the client's address, would sit in SYN-SENT for
/// minutes. Refused at once with `503`, as Istio's ztunnel does ("attempted recursive call").
const OWN_PORTS: [u16; 6] = [
    OUTBOUND_PORT,
    INBOUND_PLAINTEXT_PORT,
    HBONE_PORT,
    ADMIN_PORT,
    METRICS_PORT,
    READINESS_PORT,
];

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
    let limits = context.limits.serve_limits();
    let result = serve(
        tls,
        peer,
        handler,
        limits,
        async move { drain.signaled().await },
    )
    .await;
    match &result {
        Ok(ConnectionEnd::Unused(timeout)) => {
            context.hbone_closed(HandshakeSide::Inbound, HboneClose::Unused);
            tracing::debug!(peer = %peer_address, ?timeout, "HBONE connection closed: it carried no stream");
        }
        Ok(_) => {}
        Err(error) => {
            if matches!(error, HboneError::KeepaliveTimeout { .. }) {
                context.hbone_closed(HandshakeSide::Inbound, HboneClose::PingTimeout);
            }
            tracing::info!(peer = %peer_address, reason = error.reason(), %error, "HBONE connection closed");
        }
    }
    result.map(|_| ())
}

/// Answers `CONNECT` streams for one pod.
struct InboundHandler {
    context: Arc<ProxyContext>,
    pod: Arc<PodContext>,
}

impl ConnectHandler for InboundHandler {
    async fn handle(&self, request: HboneRequest, answer: Answer) {
        let _guard = self.context.drain.track();
        let mut record = ConnectionRecord {
            direction: Direction::Inbound,
            source: request.peer.address,
            destination: request.authority,
            source_identity: Some(request.peer.identity.clone()),
            destination_identity: Some(self.pod.workload.identity.clone()),
            mutual_tls: true,
            via: Some(request.authority),
            started: Instant::now(),
            peer_baggage: (!request.baggage.is_empty()).then(|| Box::new(request.baggage.clone())),
        };
        // Checked first: a claim naming another identity's workload says more (whose address
        // was borrowed) than that the claim is untrusted.
        let asserted = request.forwarded_for.unwrap_or(request.peer.address);
        if let Some(claimed) = self.claimed_by_another_identity(&request, asserted) {
            let status = StatusCode::UNAUTHORIZED;
            self.context.metrics.answered(status);
            self.context
                .observer
                .source_mismatch(&request.peer.identity, &claimed.identity);
            tracing::warn!(peer = %request.peer.address, identity = %request.peer.identity,
                claimed_source = %asserted, claimed_workload = %claimed.name,
                claimed_identity = %claimed.identity, authority = %request.authority,
                status = status.as_u16(),
                "HBONE request refused: its source address belongs to a workload of another identity");
            answer.refuse(status);
            let error = ProxyError::NoRoute {
                destination: request.authority,
                reason: format!(
                    "answered {status}: source address {} belongs to {} ({}), not to the peer's identity",
                    asserted, claimed.name, claimed.identity
                ),
            };
            let _ = finish(
                &self.context,
                &record,
                Outcome::Failed(FailureKind::Denied, error),
            );
            return;
        }
        let directory = &self.context.directory;
        record.source = match credited_source(request.peer.address, request.forwarded_for, || {
            directory.is_waypoint(&request.peer.identity)
        }) {
            Ok(source) => source,
            Err(untrusted) => {
                let status = StatusCode::UNAUTHORIZED;
                self.context.metrics.answered(status);
                self.context.refused(RefusalReason::UntrustedForwarded);
                tracing::warn!(peer = %request.peer.address, identity = %request.peer.identity,
                    claimed_source = %untrusted.claimed, authority = %request.authority,
                    status = status.as_u16(),
                    "HBONE request refused: it asserted a source address it does not connect from");
                answer.refuse(status);
                let error = ProxyError::NoRoute {
                    destination: request.authority,
                    reason: format!("answered {status}: {untrusted}"),
                };
                let _ = finish(
                    &self.context,
                    &record,
                    Outcome::Failed(FailureKind::Denied, error),
                );
                return;
            }
        };
        // Tracked before the check: a state replaced from here on is checked against it too.
        let tracked = self.context.connections.track(Admission {
            source_identity: Some(request.peer.identity.clone()),
            source: record.source,
            destination: request.authority,
            pod: self.pod.workload.clone(),
            via_waypoint: false,
        });
        let mut upstream = match self.admit(&request, record.source).await {
            Ok(upstream) => upstream,
            Err(Refusal {
                status,
                why,
                counted,
            }) => {
                self.context.metrics.answered(status);
                if let Some(reason) = counted {
                    self.context.refused(reason);
                }
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

/// Why a stream is refused: the status, a reason for the log, and the refusal counter it adds
/// to, if any.
struct Refusal {
    status: StatusCode,
    why: &'static str,
    counted: Option<RefusalReason>,
}

impl Refusal {
    fn new(status: StatusCode, why: &'static str) -> Self {
        Self {
            status,
            why,
            counted: None,
        }
    }
}

impl InboundHandler {
    /// The workload of another identity that owns `source`, the address this stream asserts
    /// (its `forwarded` address, else its TCP peer), if any.
    ///
    /// A connection's identity is the peer's certificate, never an address: the sending ztunnel
    /// takes it from the pod whose listener accepted the connection. The source address it
    /// forwards is only a claim; a pod that adds a neighbour's IP to its interface would
    /// otherwise travel under its own certificate with the neighbour's address. So the address
    /// must not belong to a workload of another identity (refused here, naming it); whether an
    /// address of no such workload is believed is [`credited_source`]'s decision. Waypoints
    /// relay other workloads' connections and are exempt.
    fn claimed_by_another_identity(
        &self,
        request: &HboneRequest,
        source: SocketAddr,
    ) -> Option<WorkloadInfo> {
        let owner = self.context.directory.workload(source.ip())?;
        if owner.identity == request.peer.identity
            || self.context.directory.is_waypoint(&request.peer.identity)
        {
            return None;
        }
        Some(owner)
    }

    /// Decides a stream credited with `source`: the upstream connection, or why it is refused.
    async fn admit(
        &self,
        request: &HboneRequest,
        source: SocketAddr,
    ) -> Result<TcpStream, Refusal> {
        let destination = request.authority;
        if !self.pod.owns(destination.ip()) {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "authority is not an address of this pod",
            ));
        }
        if OWN_PORTS.contains(&destination.port()) {
            return Err(Refusal {
                counted: Some(RefusalReason::Loop),
                ..Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "attempted recursive call to ourselves: the authority is one of ztunnel's own ports",
                )
            });
        }
        let Some(workload) = self.context.directory.workload(destination.ip()) else {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no such workload",
            ));
        };
        // Istio's rule: a workload behind a waypoint takes HBONE only from the waypoint, so
        // its policy cannot be bypassed by a client that tunnels to the workload directly.
        let waypoint = self.context.directory.waypoint_identities(destination.ip());
        if let Some(waypoint) = &waypoint
            && !waypoint.contains(&request.peer.identity)
        {
            return Err(Refusal::new(
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
            source,
            destination,
            destination_workload: &workload,
        };
        if !self.context.directory.authorize(&connection) {
            return Err(Refusal::new(StatusCode::UNAUTHORIZED, "denied by policy"));
        }
        upstream::connect_from(&*self.pod.sockets, Some(upstream_source), destination)
            .await
            .map_err(|error| {
                tracing::debug!(%destination, %error, "application refused the connection");
                Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "upstream refused")
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
