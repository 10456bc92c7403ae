//! HBONE: HTTP/2 `CONNECT` streams over mutual TLS on port 15008 (docs/architecture.md, "HBONE on the wire").
//!
//! - [`server`]: accepts a TLS connection, serves its `CONNECT` streams and lets a handler answer
//!   each one (`200` then raw bytes, or `400`/`401`/`503`).
//! - [`pool`]: the client side, one pool of TLS+h2 connections per (source identity,
//!   destination identities, destination address), a new connection past 100 streams; a
//!   connection left without tunnels is closed after an idle timeout.
//! - [`stream`]: one tunnel (an h2 stream) and the copy between it and a TCP socket.
//! - [`idle`]: when a copy loop last moved a byte, for idle timeouts.
//! - [`keepalive`]: PINGs with a deadline on every connection, and the server's bound on a
//!   connection that carries no stream.
//! - [`transport`]: the TCP socket under TLS (reads buffered).

pub mod baggage;
pub mod idle;
pub mod keepalive;
pub mod pool;
pub mod server;
pub mod stream;
pub mod transport;

pub use keepalive::Keepalive;
pub use pool::{HbonePool, TunnelRequest};
pub use server::{
    Answer, BadRequest, ConnectHandler, ConnectTarget, ConnectionEnd, HboneRequest, PeerInfo,
    ServeLimits,
};
pub use stream::{H2Stream, Transferred};

use crate::identity::IdentityError;

/// HTTP/2 stream flow-control window (docs/architecture.md, "HBONE on the wire").
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// HTTP/2 connection flow-control window (docs/architecture.md, "HBONE on the wire").
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// HTTP/2 maximum frame size (docs/architecture.md, "HBONE on the wire").
pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;
/// Streams a server accepts on one connection (docs/architecture.md, "HBONE on the wire").
pub const SERVER_MAX_CONCURRENT_STREAMS: u32 = 200;
/// Streams a client puts on one pooled connection before it opens another (docs/architecture.md, "HBONE on the wire").
pub const CLIENT_STREAMS_PER_CONNECTION: usize = 100;
/// How long the TCP connect to an HBONE server may take before it counts as unreachable.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long an HBONE server may take to answer a `CONNECT` (it connects onward first, which a
/// waypoint does with its own [`CONNECT_TIMEOUT`]) before the connection it went on is retired.
pub const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a TLS handshake (and, on the server, the HTTP/2 preface after it) may take before
/// the connection is dropped, unless configured otherwise.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a pooled client connection with no open tunnel is kept for reuse before it is
/// closed (Istio's ztunnel also releases unused pool connections after 5 minutes).
pub const DEFAULT_POOL_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// The largest request header block the server decodes (HPACK-decoded size). An HBONE `CONNECT`
/// carries a few hundred bytes (`:authority`, `forwarded`, `traceparent`, `baggage`); h2's own
/// default is 16 MiB per stream. Larger blocks are answered `431`.
pub const SERVER_MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;
/// Bytes h2 may buffer per stream before the copy loop waits for the peer.
pub const SEND_BUFFER: usize = 1024 * 1024;

/// What went wrong on an HBONE connection or stream.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    /// TCP connect to the peer's HBONE port failed.
    #[error("cannot connect to HBONE peer {address}: {source}")]
    Connect {
        /// The peer.
        address: std::net::SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The TLS handshake failed (identity refused, protocol mismatch, ...).
    #[error("TLS handshake with {peer} failed ({reason}): {detail}")]
    Handshake {
        /// The peer address.
        peer: std::net::SocketAddr,
        /// A short label, as counted in metrics (see [`crate::identity::verify::failure_reason`]).
        reason: &'static str,
        /// What the TLS layer or our verifier said.
        detail: String,
    },
    /// The TLS handshake (or the HTTP/2 preface after it) did not finish in time.
    #[error("handshake with {peer} did not finish within {timeout:?}")]
    HandshakeTimeout {
        /// The peer address.
        peer: std::net::SocketAddr,
        /// The limit.
        timeout: std::time::Duration,
    },
    /// The peer stopped answering keep-alive PINGs: it is gone, or hostile.
    #[error(
        "HBONE peer {peer} did not answer a keep-alive PING within {timeout:?}; connection closed"
    )]
    KeepaliveTimeout {
        /// The peer address.
        peer: std::net::SocketAddr,
        /// The PING deadline.
        timeout: std::time::Duration,
    },
    /// TLS completed without ALPN `h2`.
    #[error("peer {peer} did not negotiate ALPN h2")]
    NoAlpn {
        /// The peer address.
        peer: std::net::SocketAddr,
    },
    /// Our certificate or the peer's could not be used.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// An HTTP/2 protocol error.
    #[error("HTTP/2 error with {peer}: {source}")]
    H2 {
        /// The peer address.
        peer: std::net::SocketAddr,
        /// h2's error.
        source: h2::Error,
    },
    /// The peer did not answer the CONNECT in time.
    #[error("HBONE peer {peer} did not answer CONNECT {authority} within {timeout:?}")]
    ResponseTimeout {
        /// The peer address.
        peer: std::net::SocketAddr,
        /// The requested authority.
        authority: std::net::SocketAddr,
        /// The limit.
        timeout: std::time::Duration,
    },
    /// The peer answered the CONNECT with something other than 200.
    #[error("HBONE peer {peer} answered CONNECT {authority} with {status}")]
    Refused {
        /// The peer address.
        peer: std::net::SocketAddr,
        /// The requested authority.
        authority: std::net::SocketAddr,
        /// The status received.
        status: http::StatusCode,
    },
    /// A request could not be built.
    #[error("cannot build CONNECT request for {authority}: {detail}")]
    Request {
        /// The authority.
        authority: std::net::SocketAddr,
        /// Why.
        detail: String,
    },
}

impl HboneError {
    /// A short label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect_failed",
            Self::Handshake { reason, .. } => reason,
            Self::HandshakeTimeout { .. } => "handshake_timeout",
            Self::KeepaliveTimeout { .. } => "keepalive_timeout",
            Self::NoAlpn { .. } => "no_alpn_h2",
            Self::Identity(_) => "no_certificate",
            Self::H2 { .. } => "http2_error",
            Self::ResponseTimeout { .. } => "response_timeout",
            Self::Refused { .. } => "refused",
            Self::Request { .. } => "bad_request",
        }
    }
}

/// Turns a tokio-rustls handshake error into an [`HboneError::Handshake`] with its reason.
pub(crate) fn handshake_error(peer: std::net::SocketAddr, error: std::io::Error) -> HboneError {
    let Some(tls_error) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return HboneError::Handshake {
            peer,
            reason: "tls_io_error",
            detail: error.to_string(),
        };
    };
    let reason = crate::identity::verify::failure_reason(tls_error);
    let detail = crate::identity::verify::failure_detail(tls_error);
    HboneError::Handshake {
        peer,
        reason,
        detail,
    }
}
