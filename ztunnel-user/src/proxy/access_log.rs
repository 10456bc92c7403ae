//! One line per closed connection, on its own tracing target so it can be routed apart.

use std::{net::SocketAddr, time::Instant};

use crate::{hbone::Transferred, identity::SpiffeId};

/// The tracing target of access-log lines.
pub const TARGET: &str = "ztunnel::access";

/// Which of the proxy's paths carried a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A pod's own connection, captured on 15001.
    Outbound,
    /// HBONE to a pod, on 15008.
    Inbound,
    /// Plaintext to a pod, captured on 15006.
    Passthrough,
    /// Relayed by `ztunnel waypoint`.
    Waypoint,
}

impl Direction {
    /// The word in the access log's `direction` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
            Self::Passthrough => "passthrough",
            Self::Waypoint => "waypoint",
        }
    }
}

/// What the access log says about one connection.
#[derive(Debug)]
pub struct ConnectionRecord {
    /// Which path carried it.
    pub direction: Direction,
    /// Original source.
    pub source: SocketAddr,
    /// Original destination.
    pub destination: SocketAddr,
    /// Source identity, if known.
    pub source_identity: Option<SpiffeId>,
    /// Destination identity, if known.
    pub destination_identity: Option<SpiffeId>,
    /// Whether the bytes travel in an HBONE tunnel (mutual TLS).
    pub mutual_tls: bool,
    /// Where the bytes actually went (HBONE server or upstream address).
    pub via: Option<SocketAddr>,
    /// When the connection was accepted.
    pub started: Instant,
    /// What the peer's `baggage` header said about it (the client's on inbound HBONE, the
    /// server's `200` on outbound), if anything: metrics label an unknown peer from it.
    pub peer_baggage: Option<Box<crate::hbone::baggage::Baggage>>,
}

impl ConnectionRecord {
    /// Writes the line: `reason` is `ok` or why the connection ended.
    pub fn log(&self, transferred: Transferred, reason: &str) {
        tracing::info!(
            target: TARGET,
            direction = self.direction.as_str(),
            src = %self.source,
            dst = %self.destination,
            src_identity = %display_or_dash(self.source_identity.as_ref()),
            dst_identity = %display_or_dash(self.destination_identity.as_ref()),
            mtls = self.mutual_tls,
            via = %self.via.map(|address| address.to_string()).unwrap_or_else(|| "-".to_owned()),
            bytes_sent = transferred.sent,
            bytes_received = transferred.received,
            duration_ms = self.started.elapsed().as_millis() as u64,
            reason,
            "connection closed"
        );
    }
}

fn display_or_dash(identity: Option<&SpiffeId>) -> String {
    identity
        .map(ToString::to_string)
        .unwrap_or_else(|| "-".to_owned())
}
