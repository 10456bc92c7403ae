//! One `CONNECT` stream at a waypoint: resolve the destination, apply its policy with the
//! client's identity, open the onward tunnel with the waypoint's identity, join the two.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use http::StatusCode;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::{
    hbone::{
        Answer, ConnectHandler, ConnectionEnd, HboneError, HboneRequest,
        server::{accept_tls, serve},
    },
    identity::SpiffeId,
    proxy::{
        InboundConnection, OutboundRoute, ProxyContext, ProxyError, WorkloadInfo,
        access_log::{ConnectionRecord, Direction},
        connections::Admission,
        forwarded::credited_source,
        metrics::{HandshakeSide, HboneClose, RefusalReason},
        observer::FailureKind,
        outbound::{Outcome, finish, tunnel_failure},
        retry::{HboneHop, TunnelSource, open_tunnel},
    },
    socket::HostSocketFactory,
};

/// Answers the `CONNECT` streams a waypoint accepts.
pub struct WaypointHandler {
    context: Arc<ProxyContext>,
    identity: SpiffeId,
}

impl WaypointHandler {
    /// A handler proxying with `context`, presenting `identity` onward.
    pub fn new(context: Arc<ProxyContext>, identity: SpiffeId) -> Self {
        Self { context, identity }
    }

    /// Serves one accepted TCP connection until it closes (or drains). Handshake failures are
    /// logged with their reason and counted; they never stop the listener.
    pub async fn serve_connection(self: Arc<Self>, acceptor: TlsAcceptor, tcp: TcpStream) {
        let Ok(peer_address) = tcp.peer_addr() else {
            return;
        };
        let handshake_timeout = self.context.limits.handshake_timeout;
        let (tls, peer) = match accept_tls(&acceptor, tcp, peer_address, handshake_timeout).await {
            Ok(accepted) => accepted,
            Err(error) => {
                let reason = error.reason();
                self.context
                    .identity_failure(HandshakeSide::Inbound, reason);
                tracing::warn!(peer = %peer_address, reason, %error, "HBONE connection to the waypoint refused");
                return;
            }
        };
        self.context
            .metrics
            .hbone_connections_accepted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let drain = self.context.drain.clone();
        let context = self.context.clone();
        let limits = context.limits.serve_limits();
        let served = serve(
            tls,
            peer,
            self,
            limits,
            async move { drain.signaled().await },
        );
        match served.await {
            Ok(ConnectionEnd::Unused(_)) => {
                context.hbone_closed(HandshakeSide::Inbound, HboneClose::Unused);
            }
            Ok(_) => {}
            Err(error) => {
                if matches!(error, HboneError::KeepaliveTimeout { .. }) {
                    context.hbone_closed(HandshakeSide::Inbound, HboneClose::PingTimeout);
                }
                tracing::debug!(peer = %peer_address, %error, "HBONE connection to the waypoint ended with an error");
            }
        }
    }

    /// The onward hop for `request` and the destination's policy decision, or the status to
    /// refuse the stream with.
    fn admit(
        &self,
        request: &HboneRequest,
        source: SocketAddr,
    ) -> Result<(HboneHop, SpiffeId), (StatusCode, String)> {
        let directory = &self.context.directory;
        let hop = match directory.route_from_waypoint(request.authority) {
            OutboundRoute::Hbone {
                hbone_address,
                authority,
                expected,
            } => HboneHop {
                hbone_address,
                authority,
                expected,
            },
            OutboundRoute::Passthrough { address } => {
                return Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{address} does not speak HBONE; this waypoint only forwards HBONE"),
                ));
            }
            OutboundRoute::Refuse { reason } => {
                return Err((StatusCode::SERVICE_UNAVAILABLE, reason));
            }
        };
        let Some(workload) = directory.workload(hop.authority.ip()) else {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no workload at {}", hop.authority),
            ));
        };
        let connection = InboundConnection {
            source_identity: Some(&request.peer.identity),
            source,
            destination: hop.authority,
            destination_workload: &workload,
        };
        if !directory.authorize(&connection) {
            return Err((StatusCode::UNAUTHORIZED, "denied by policy".to_owned()));
        }
        Ok((hop, workload.identity))
    }

    fn refuse(&self, record: &ConnectionRecord, answer: Answer, status: StatusCode, why: String) {
        self.context.metrics.answered(status);
        tracing::info!(src = %record.source, identity = ?record.source_identity,
            authority = %record.destination, status = status.as_u16(), why, "waypoint refused a stream");
        answer.refuse(status);
        let kind = if status == StatusCode::UNAUTHORIZED {
            FailureKind::Denied
        } else {
            FailureKind::Connect
        };
        let error = ProxyError::NoRoute {
            destination: record.destination,
            reason: format!("answered {status}: {why}"),
        };
        let _ = finish(&self.context, record, Outcome::Failed(kind, error));
    }
}

impl ConnectHandler for WaypointHandler {
    async fn handle(&self, request: HboneRequest, answer: Answer) {
        let _guard = self.context.drain.track();
        let mut record = ConnectionRecord {
            direction: Direction::Waypoint,
            source: request.peer.address,
            destination: request.authority,
            source_identity: Some(request.peer.identity.clone()),
            destination_identity: None,
            mutual_tls: true,
            via: None,
            started: Instant::now(),
            peer_baggage: None,
        };
        // Policy at the waypoint sees the client's own address, never one it merely asserted.
        let directory = &self.context.directory;
        let source = match credited_source(request.peer.address, request.forwarded_for, || {
            directory.is_waypoint(&request.peer.identity)
        }) {
            Ok(source) => source,
            Err(untrusted) => {
                self.context.refused(RefusalReason::UntrustedForwarded);
                return self.refuse(
                    &record,
                    answer,
                    StatusCode::UNAUTHORIZED,
                    untrusted.to_string(),
                );
            }
        };
        record.source = source;
        let (hop, destination_identity) = match self.admit(&request, source) {
            Ok(admitted) => admitted,
            Err((status, why)) => return self.refuse(&record, answer, status, why),
        };
        record.destination_identity = Some(destination_identity);
        // Tracked from here, then checked once more: a state replaced since `admit` is not missed.
        let tracked = self.context.connections.track(Admission {
            source_identity: Some(request.peer.identity.clone()),
            source,
            destination: hop.authority,
            pod: self
                .context
                .directory
                .workload(hop.authority.ip())
                .unwrap_or_else(|| WorkloadInfo::new(self.identity.clone(), hop.authority.ip())),
            via_waypoint: true,
        });
        if let Some(why) = tracked.admission().refusal(&*self.context.directory) {
            return self.refuse(&record, answer, StatusCode::UNAUTHORIZED, why.to_owned());
        }
        let tunnel_source = TunnelSource {
            identity: &self.identity,
            forwarded_for: source,
            baggage: None,
            sockets: &HostSocketFactory,
        };
        let reroute = || {
            self.context
                .directory
                .route_from_waypoint(request.authority)
        };
        let (hop, onward) = open_tunnel(&self.context, tunnel_source, hop, reroute).await;
        record.via = Some(hop.hbone_address);
        let onward = match onward {
            Ok(onward) => onward,
            Err(error) => {
                let status = match &error {
                    HboneError::Refused { status, .. } if *status == StatusCode::UNAUTHORIZED => {
                        StatusCode::UNAUTHORIZED
                    }
                    _ => StatusCode::SERVICE_UNAVAILABLE,
                };
                tunnel_failure(&self.context, &self.identity, hop.hbone_address, &error);
                return self.refuse(&record, answer, status, error.to_string());
            }
        };
        self.context.metrics.answered(StatusCode::OK);
        let outcome = match answer.accept() {
            Ok(downstream) => {
                let opened = self.context.opened(&record);
                let (transferred, result) =
                    downstream.splice_until(onward, tracked.revoked()).await;
                if crate::proxy::inbound::revoked(&result, &tracked) {
                    self.context.closed_by_policy(&record);
                }
                Outcome::Closed(
                    opened,
                    transferred,
                    result.map_err(|source| ProxyError::Interrupted {
                        address: hop.hbone_address,
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
