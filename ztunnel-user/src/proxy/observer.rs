//! Hooks through which connection events reach an exporter (Istio-named Prometheus metrics in
//! the daemon, see [`super::istio_metrics`]); the proxy's own counters are in [`super::metrics`].

use super::{
    access_log::ConnectionRecord,
    metrics::{HandshakeSide, HboneClose, RefusalReason},
};
use crate::{hbone::Transferred, identity::SpiffeId};

/// Why a connection never carried bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Denied by authorization policy.
    Denied,
    /// The HBONE peer's or our certificate was refused, or TLS failed.
    Tls,
    /// The destination (or HBONE server) could not be reached or refused.
    Connect,
}

/// Receives connection events.
pub trait ConnectionObserver: Send + Sync + 'static {
    /// The connection is established end to end and carries bytes. What is returned hears of
    /// its end, so an exporter works out what it needs of the record once per connection.
    fn opened(&self, _record: &ConnectionRecord) -> Box<dyn OpenConnection> {
        Box::new(NoObserver)
    }
    /// The connection was never established.
    fn failed(&self, _record: &ConnectionRecord, _kind: FailureKind) {}
    /// The HBONE server at `address` was unreachable (`reason`); the connection was retried on
    /// another endpoint.
    fn endpoint_retried(&self, _address: std::net::SocketAddr, _reason: &'static str) {}
    /// A TLS handshake failed because of identity or protocol.
    fn identity_failure(&self, _side: HandshakeSide, _reason: &'static str) {}
    /// An inbound stream from `peer` claimed a source address of a workload whose identity is
    /// `claimed` (see [`super::inbound`]); it was refused.
    fn source_mismatch(&self, _peer: &SpiffeId, _claimed: &SpiffeId) {}
    /// A connection or stream was refused before it was proxied (a limit was reached, an
    /// untrusted source claim, a loop).
    fn refused(&self, _reason: RefusalReason) {}
    /// ztunnel closed an HBONE connection its peer had not closed (`side`: our server's or
    /// our client's).
    fn hbone_closed(&self, _side: HandshakeSide, _reason: HboneClose) {}
    /// An established connection was closed because it was idle.
    fn idle_timeout(&self, _record: &ConnectionRecord) {}
    /// An established connection was closed because a new mesh state refused it.
    fn closed_by_policy(&self, _record: &ConnectionRecord) {}
}

/// What an observer keeps of one open connection, from [`ConnectionObserver::opened`].
pub trait OpenConnection: Send {
    /// The connection ended, having moved `transferred`.
    fn closed(self: Box<Self>, transferred: Transferred);
}

/// Observes nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl ConnectionObserver for NoObserver {}

impl OpenConnection for NoObserver {
    fn closed(self: Box<Self>, _transferred: Transferred) {}
}
