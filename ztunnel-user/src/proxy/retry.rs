//! Opening a tunnel with a second chance: when the chosen HBONE server (a waypoint replica or a
//! service endpoint) cannot be reached, it is marked as refusing (the balancer skips it for a
//! while), counted, and the connection is routed again, to another endpoint.
//!
//! Only failures that happen before the tunnel exists are retried: the client's bytes are read
//! only once the tunnel is up, so a retry is invisible to it (after a `CONNECT` that got no
//! answer in time, the destination may see an empty connection that is then reset). A server that answered (with a
//! status, or a certificate we refused) is not retried: another endpoint would answer the same.

use std::net::SocketAddr;

use super::{OutboundRoute, ProxyContext};
use crate::{
    hbone::{H2Stream, HboneError, TunnelRequest},
    identity::SpiffeId,
    socket::SocketFactory,
};

/// At most this many HBONE servers are tried for one connection.
pub const MAX_CONNECT_ATTEMPTS: usize = 3;

/// One HBONE hop: where the server is, what to ask it for, whom it must prove to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HboneHop {
    /// The HBONE server (`ip:15008`).
    pub hbone_address: SocketAddr,
    /// The `:authority` of the `CONNECT`.
    pub authority: SocketAddr,
    /// The identities the server may prove.
    pub expected: Vec<SpiffeId>,
}

/// Who opens the tunnel and from where.
#[derive(Clone, Copy)]
pub struct TunnelSource<'a> {
    /// The identity presented.
    pub identity: &'a SpiffeId,
    /// The original client, sent as `forwarded: for=`.
    pub forwarded_for: SocketAddr,
    /// The source workload's `baggage` header value, if any.
    pub baggage: Option<&'a str>,
    /// Makes the TCP socket.
    pub sockets: &'a dyn SocketFactory,
}

/// Whether a failure leaves the tunnel unopened because the server is unreachable or its
/// connection broke, as opposed to an answer the server gave.
fn unreachable(error: &HboneError) -> bool {
    matches!(
        error,
        HboneError::Connect { .. }
            | HboneError::HandshakeTimeout { .. }
            | HboneError::H2 { .. }
            | HboneError::ResponseTimeout { .. }
    )
}

/// Opens a tunnel to `hop`; if its server is unreachable, marks it, counts a retry and opens
/// one to the hop `reroute` picks instead, as long as that is a server not tried yet. Returns
/// the last hop tried and the outcome.
pub async fn open_tunnel(
    context: &ProxyContext,
    source: TunnelSource<'_>,
    mut hop: HboneHop,
    reroute: impl Fn() -> OutboundRoute,
) -> (HboneHop, Result<H2Stream, HboneError>) {
    let mut tried = Vec::with_capacity(MAX_CONNECT_ATTEMPTS);
    loop {
        let request = TunnelRequest {
            source: source.identity,
            expected: &hop.expected,
            hbone_address: hop.hbone_address,
            authority: hop.authority,
            forwarded_for: source.forwarded_for,
            baggage: source.baggage,
            sockets: source.sockets,
        };
        let error = match context.pool.connect(request).await {
            Ok(tunnel) => return (hop, Ok(tunnel)),
            Err(error) => error,
        };
        tried.push(hop.hbone_address);
        if !unreachable(&error) || tried.len() >= MAX_CONNECT_ATTEMPTS {
            return (hop, Err(error));
        }
        // Marked before routing again, so that the balancer picks another endpoint.
        context.directory.report_refused(hop.hbone_address);
        let next = match reroute() {
            OutboundRoute::Hbone {
                hbone_address,
                authority,
                expected,
            } if !tried.contains(&hbone_address) => HboneHop {
                hbone_address,
                authority,
                expected,
            },
            _ => return (hop, Err(error)),
        };
        context.endpoint_retried(hop.hbone_address, error.reason());
        tracing::info!(failed = %hop.hbone_address, next = %next.hbone_address,
            authority = %hop.authority, %error, "HBONE server unreachable; retrying on another endpoint");
        hop = next;
    }
}
