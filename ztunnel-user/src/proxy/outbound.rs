//! Outbound: a pod's connection, captured to its 15001 listener, goes through an HBONE tunnel
//! to the destination (or its waypoint), or as plain TCP to a destination outside the mesh.

use std::{net::SocketAddr, time::Instant};

use tokio::net::TcpStream;

use super::{
    OutboundRoute, PodContext, ProxyContext, ProxyError,
    access_log::{ConnectionRecord, Direction},
    copy,
    metrics::{HandshakeSide, RefusalReason},
    observer::{FailureKind, OpenConnection},
    retry::{HboneHop, TunnelSource, open_tunnel},
};
use crate::{
    hbone::{HboneError, Transferred, idle::is_idle_timeout},
    identity::SpiffeId,
};

/// Proxies one accepted outbound connection to `original_destination`.
pub async fn handle(
    context: &ProxyContext,
    pod: &PodContext,
    mut client: TcpStream,
    original_destination: SocketAddr,
) -> Result<(), ProxyError> {
    let _guard = context.drain.track();
    let limit = context.limits.max_connections_per_pod;
    let Some(_slot) = pod.connections.try_acquire(limit) else {
        return Err(refuse_over_limit(
            context,
            pod,
            client,
            original_destination,
            limit,
        ));
    };
    let _ = client.set_nodelay(true);
    let source = original_source(pod, &client)?;
    let route = context
        .directory
        .route_outbound(&pod.workload, original_destination);
    let mut record = ConnectionRecord {
        direction: Direction::Outbound,
        source,
        destination: original_destination,
        source_identity: Some(pod.workload.identity.clone()),
        destination_identity: None,
        mutual_tls: false,
        via: None,
        started: Instant::now(),
        peer_baggage: None,
    };
    let outcome = match route {
        OutboundRoute::Hbone {
            hbone_address,
            authority,
            expected,
        } => {
            let first = HboneHop {
                hbone_address,
                authority,
                expected,
            };
            let baggage = context.directory.baggage(source.ip());
            let tunnel_source = TunnelSource {
                identity: &pod.workload.identity,
                forwarded_for: source,
                baggage: baggage.as_deref(),
                sockets: &*pod.sockets,
            };
            let reroute = || {
                context
                    .directory
                    .route_outbound(&pod.workload, original_destination)
            };
            let (hop, tunnel) = open_tunnel(context, tunnel_source, first, reroute).await;
            record.via = Some(hop.hbone_address);
            record.mutual_tls = true;
            record.destination_identity = hop.expected.first().cloned();
            match tunnel {
                Ok(tunnel) => {
                    let answered = tunnel.peer_baggage();
                    if !answered.is_empty() {
                        record.peer_baggage = Some(Box::new(answered.clone()));
                    }
                    let opened = context.opened(&record);
                    let (transferred, result) = tunnel
                        .copy_with(&mut client, context.limits.idle_timeout)
                        .await;
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
                    tunnel_failure(context, &pod.workload.identity, hop.hbone_address, &error),
                    ProxyError::Hbone(error),
                ),
            }
        }
        OutboundRoute::Passthrough { address } => {
            record.via = Some(address);
            match connect_plain(pod, address).await {
                Ok(mut upstream) => {
                    let opened = context.opened(&record);
                    let (transferred, result) =
                        copy::copy_tcp(&mut client, &mut upstream, context.limits.idle_timeout)
                            .await;
                    Outcome::Closed(
                        opened,
                        transferred,
                        result.map_err(|source| ProxyError::Interrupted { address, source }),
                    )
                }
                Err(error) => Outcome::Failed(FailureKind::Connect, error),
            }
        }
        OutboundRoute::Refuse { reason } => Outcome::Failed(
            FailureKind::Connect,
            ProxyError::NoRoute {
                destination: original_destination,
                reason,
            },
        ),
    };
    finish(context, &record, outcome)
}

/// How a proxied connection ended.
pub(crate) enum Outcome {
    /// It was established (`opened` says so to the observer) and carried `Transferred` bytes;
    /// then ended cleanly or not.
    Closed(Box<dyn OpenConnection>, Transferred, Result<(), ProxyError>),
    /// It was never established.
    Failed(FailureKind, ProxyError),
}

/// Counts, exports and logs the end of a connection, and passes its result on.
pub(crate) fn finish(
    context: &ProxyContext,
    record: &ConnectionRecord,
    outcome: Outcome,
) -> Result<(), ProxyError> {
    use std::sync::atomic::Ordering::Relaxed;
    let (transferred, result) = match outcome {
        Outcome::Closed(opened, transferred, result) => {
            if let Err(ProxyError::Interrupted { source, .. }) = &result
                && is_idle_timeout(source)
            {
                context.metrics.idle_timeouts.fetch_add(1, Relaxed);
                context.observer.idle_timeout(record);
            }
            context.metrics.connections_closed.fetch_add(1, Relaxed);
            context
                .metrics
                .bytes_sent
                .fetch_add(transferred.sent, Relaxed);
            context
                .metrics
                .bytes_received
                .fetch_add(transferred.received, Relaxed);
            opened.closed(transferred);
            (transferred, result)
        }
        Outcome::Failed(kind, error) => {
            context.observer.failed(record, kind);
            (Transferred::default(), Err(error))
        }
    };
    match &result {
        Ok(()) => record.log(transferred, "ok"),
        Err(ProxyError::Interrupted { address, source }) if ended_by_peer(source) => {
            tracing::debug!(via = %address, error = %source, src = %record.source,
                dst = %record.destination, "connection ended by a peer's reset; logged as closed");
            record.log(transferred, "ok");
            return Ok(());
        }
        Err(error) => record.log(transferred, &error.to_string()),
    }
    result
}

/// Whether an established connection ended because one of its peers closed abruptly (a TCP
/// reset, or the tunnel's stream reset by the other ztunnel, which relays such a reset).
///
/// A TCP connection may end that way at any time: iperf3's server, for one, closes its data
/// connection with bytes still unread, and the kernel answers with a reset. Istio's ztunnel
/// does not count these as errors (its copy loop ignores reset, broken pipe, unexpected EOF and
/// not connected), and neither do we: the access log says `ok` and the metrics count a close,
/// not a failure. The reset itself is still passed on to the other side.
pub(crate) fn ended_by_peer(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset, NotConnected, UnexpectedEof};
    matches!(
        error.kind(),
        ConnectionReset | BrokenPipe | UnexpectedEof | NotConnected
    )
}

/// Resets a connection the pod may not open because it already has `limit` open; counts it.
fn refuse_over_limit(
    context: &ProxyContext,
    pod: &PodContext,
    client: TcpStream,
    original_destination: SocketAddr,
    limit: usize,
) -> ProxyError {
    context.refused(RefusalReason::PerPodLimit);
    tracing::warn!(pod = %pod.workload.identity, destination = %original_destination, limit,
        "connection refused: the pod has reached its limit of open connections (--max-connections-per-pod)");
    // A reset rather than a FIN: the application sees the refusal at once instead of an empty
    // response.
    let _ = socket2::SockRef::from(&client).set_linger(Some(std::time::Duration::ZERO));
    drop(client);
    ProxyError::NoRoute {
        destination: original_destination,
        reason: format!("the pod has {limit} connections open, its limit"),
    }
}

/// Counts and logs why a tunnel could not be opened; tells the balancer about refusals.
pub(crate) fn tunnel_failure(
    context: &ProxyContext,
    source: &SpiffeId,
    hbone_address: SocketAddr,
    error: &HboneError,
) -> FailureKind {
    match error {
        HboneError::Handshake { reason, .. } => {
            context.identity_failure(HandshakeSide::Outbound, reason);
            tracing::warn!(%source, %hbone_address, reason, %error,
                "HBONE server refused; connection closed");
            FailureKind::Tls
        }
        HboneError::Refused { status, .. } if *status == http::StatusCode::UNAUTHORIZED => {
            FailureKind::Denied
        }
        HboneError::Connect { .. }
        | HboneError::ResponseTimeout { .. }
        | HboneError::Refused { .. } => {
            context.directory.report_refused(hbone_address);
            FailureKind::Connect
        }
        _ => FailureKind::Connect,
    }
}

/// The pod-side source of an outbound connection. The connect hook sends the pod's traffic to
/// its own loopback, so a loopback peer means "this pod, that port".
fn original_source(pod: &PodContext, client: &TcpStream) -> Result<SocketAddr, ProxyError> {
    let peer = client.peer_addr().map_err(ProxyError::Socket)?;
    if peer.ip().is_loopback()
        && let Some(pod_ip) = pod
            .workload
            .ips
            .iter()
            .find(|ip| ip.is_ipv6() == peer.is_ipv6())
    {
        return Ok(SocketAddr::new(*pod_ip, peer.port()));
    }
    Ok(peer)
}

async fn connect_plain(pod: &PodContext, address: SocketAddr) -> Result<TcpStream, ProxyError> {
    let upstream_error = |source| ProxyError::Upstream { address, source };
    let socket = pod
        .sockets
        .new_tcp_socket(address.is_ipv6())
        .map_err(upstream_error)?;
    let stream = socket.connect(address).await.map_err(upstream_error)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use std::io::{Error, ErrorKind};

    use super::ended_by_peer;
    use crate::hbone::idle::idle_error;

    #[test]
    fn a_peer_reset_is_a_close_and_an_idle_timeout_is_not() {
        for kind in [
            ErrorKind::ConnectionReset,
            ErrorKind::BrokenPipe,
            ErrorKind::UnexpectedEof,
            ErrorKind::NotConnected,
        ] {
            let error = Error::new(kind, "peer went away");
            println!("{kind:?}: ended by peer = {}", ended_by_peer(&error));
            assert!(ended_by_peer(&error), "{kind:?}");
        }
        let idle = idle_error(std::time::Duration::from_secs(1));
        let refused = Error::from(ErrorKind::ConnectionRefused);
        println!(
            "idle timeout: {}, connection refused: {}",
            ended_by_peer(&idle),
            ended_by_peer(&refused)
        );
        assert!(!ended_by_peer(&idle));
        assert!(!ended_by_peer(&refused));
    }
}
