//! Inbound plaintext (listener 15006): a connection to a pod that did not come through HBONE.
//! Policy applies with no peer identity, then the connection goes to its original destination
//! (the accepted socket's local address: TPROXY semantics).

use std::time::Instant;

use tokio::net::TcpStream;

use super::{
    InboundConnection, PodContext, ProxyContext, ProxyError, access_log::ConnectionRecord, copy,
    outbound::finish, upstream,
};
use crate::hbone::Transferred;

/// Proxies one plaintext connection accepted on a pod's inbound listener.
pub async fn handle(context: &ProxyContext, pod: &PodContext, mut client: TcpStream) -> Result<(), ProxyError> {
    let _guard = context.drain.track();
    let source = client.peer_addr().map_err(ProxyError::Socket)?;
    let destination = client.local_addr().map_err(ProxyError::Socket)?;
    let record = ConnectionRecord {
        direction: "passthrough",
        source,
        destination,
        source_identity: None,
        destination_identity: Some(pod.workload.identity.to_string()),
        via: Some(destination),
        started: Instant::now(),
    };
    context.metrics.connections_opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let workload = context.directory.workload(destination.ip()).unwrap_or_else(|| pod.workload.clone());
    let connection = InboundConnection {
        source_identity: None,
        source,
        destination,
        destination_workload: &workload,
    };
    let result = if context.directory.authorize(&connection) {
        match upstream::connect_from(&*pod.sockets, Some(source.ip()), destination).await {
            Ok(mut upstream) => {
                let (transferred, result) = copy::copy_tcp(&mut client, &mut upstream).await;
                return finish(context, &record, transferred, result.map_err(|source| ProxyError::Upstream { address: destination, source }));
            }
            Err(source) => Err(ProxyError::Upstream { address: destination, source }),
        }
    } else {
        Err(ProxyError::NoRoute { destination, reason: "denied by policy (no peer identity)".to_owned() })
    };
    finish(context, &record, Transferred::default(), result)
}
