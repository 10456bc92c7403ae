//! One line per closed connection, on its own tracing target so it can be routed apart.

use std::{net::SocketAddr, time::Instant};

use crate::hbone::Transferred;

/// The tracing target of access-log lines.
pub const TARGET: &str = "ztunnel::access";

/// What the access log says about one connection.
#[derive(Debug)]
pub struct ConnectionRecord {
    /// `outbound`, `inbound` or `passthrough`.
    pub direction: &'static str,
    /// Original source.
    pub source: SocketAddr,
    /// Original destination.
    pub destination: SocketAddr,
    /// Source identity, if known.
    pub source_identity: Option<String>,
    /// Destination identity, if known.
    pub destination_identity: Option<String>,
    /// Where the bytes actually went (HBONE server or upstream address).
    pub via: Option<SocketAddr>,
    /// When the connection was accepted.
    pub started: Instant,
}

impl ConnectionRecord {
    /// Writes the line: `reason` is `ok` or why the connection ended.
    pub fn log(&self, transferred: Transferred, reason: &str) {
        tracing::info!(
            target: TARGET,
            direction = self.direction,
            src = %self.source,
            dst = %self.destination,
            src_identity = self.source_identity.as_deref().unwrap_or("-"),
            dst_identity = self.destination_identity.as_deref().unwrap_or("-"),
            via = %self.via.map(|address| address.to_string()).unwrap_or_else(|| "-".to_owned()),
            bytes_sent = transferred.sent,
            bytes_received = transferred.received,
            duration_ms = self.started.elapsed().as_millis() as u64,
            reason,
            "connection closed"
        );
    }
}
