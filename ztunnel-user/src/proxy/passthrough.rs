//! Inbound plaintext (listener 15006): a connection to a pod that did not come through HBONE.
//! Policy applies with no peer identity, then the connection goes to its original destination
//! (the accepted socket's local address: TPROXY semantics).

use std::time::Instant;

use tokio::net::TcpStream;

use super::{
    InboundConnection, PodContext, ProxyContext, ProxyError,
    access_log::{ConnectionRecord, Direction},
    connections::Admission,
    copy,
    observer::FailureKind,
    outbound::{Outcome, finish},
    upstream,
};

/// Proxies one plaintext connection accepted on a pod's inbound listener; the original
/// destination is the accepted socket's local address.
pub async fn handle(
    context: &ProxyContext,
    pod: &PodContext,
    client: TcpStream,
) -> Result<(), ProxyError> {
    let destination = client.local_addr().map_err(ProxyError::Socket)?;
    handle_to(context, pod, client, destination).await
}

/// Like [`handle`] with the original destination given (tests, and listeners that learn it
/// some other way).
pub async fn handle_to(
    context: &ProxyContext,
    pod: &PodContext,
    mut client: TcpStream,
    destination: std::net::SocketAddr,
) -> Result<(), ProxyError> {
    let _guard = context.drain.track();
    let source = client.peer_addr().map_err(ProxyError::Socket)?;
    let record = ConnectionRecord {
        direction: Direction::Passthrough,
        source,
        destination,
        source_identity: None,
        destination_identity: Some(pod.workload.identity.clone()),
        mutual_tls: false,
        via: Some(destination),
        started: Instant::now(),
        peer_baggage: None,
    };
    // Tracked before the check: a state replaced from here on is checked against it too.
    let tracked = context.connections.track(Admission {
        source_identity: None,
        source,
        destination,
        pod: pod.workload.clone(),
        via_waypoint: false,
    });
    let workload = context
        .directory
        .workload(destination.ip())
        .unwrap_or_else(|| pod.workload.clone());
    let connection = InboundConnection {
        source_identity: None,
        source,
        destination,
        destination_workload: &workload,
    };
    let outcome = if !context.directory.authorize(&connection) {
        let reason = "denied by policy (no peer identity)".to_owned();
        Outcome::Failed(
            FailureKind::Denied,
            ProxyError::NoRoute {
                destination,
                reason,
            },
        )
    } else {
        match upstream::connect_from(&*pod.sockets, Some(source.ip()), destination).await {
            Ok(mut upstream) => {
                let opened = context.opened(&record);
                let (transferred, result) = copy::copy_tcp_until(
                    &mut client,
                    &mut upstream,
                    context.limits.idle_timeout,
                    tracked.revoked(),
                )
                .await;
                if super::inbound::revoked(&result, &tracked) {
                    context.closed_by_policy(&record);
                }
                Outcome::Closed(
                    opened,
                    transferred,
                    result.map_err(|source| ProxyError::Interrupted {
                        address: destination,
                        source,
                    }),
                )
            }
            Err(source) => Outcome::Failed(
                FailureKind::Connect,
                ProxyError::Upstream {
                    address: destination,
                    source,
                },
            ),
        }
    };
    finish(context, &record, outcome)
}
