//! The HBONE client: pooled TLS+h2 connections and one `CONNECT` stream per tunnel.
//!
//! Connections are pooled per (source identity, destination identities, destination address)
//! as docs/architecture.md ("HBONE on the wire") says; a connection carries at most [`CLIENT_STREAMS_PER_CONNECTION`] open
//! tunnels, past that a new one is opened. A connection made with a certificate that has since
//! been rotated keeps its open tunnels but gets no new ones, so new tunnels use the new
//! certificate; so does a connection whose server sent `GOAWAY` (it is draining). A connection
//! that has carried no tunnel for the pool's idle timeout is released (its TLS connection
//! closed), so a burst of tunnels leaves no file descriptors behind. Every connection is pinged
//! ([`super::keepalive`]); one whose server stops answering is closed and takes no more tunnels.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::{
    CLIENT_STREAMS_PER_CONNECTION, CONNECT_TIMEOUT, CONNECTION_WINDOW, DEFAULT_POOL_IDLE_TIMEOUT,
    H2Stream, HANDSHAKE_TIMEOUT, HboneError, MAX_FRAME_SIZE, RESPONSE_TIMEOUT, SEND_BUFFER,
    STREAM_WINDOW, handshake_error,
    keepalive::{Keepalive, PingFailure, ping_until_unanswered},
};
use crate::{
    identity::{CertificateStore, SpiffeId, tls},
    socket::SocketFactory,
};

/// How long a tunnel waits for its source's first certificate from Istio's CA (a pod's first
/// connection, right after it was enrolled) before it fails.
const CERTIFICATE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a tunnel is for.
#[derive(Clone, Copy)]
pub struct TunnelRequest<'a> {
    /// The source workload's identity: its certificate is presented.
    pub source: &'a SpiffeId,
    /// Identities the server may prove (destination workload, service SANs or waypoint).
    pub expected: &'a [SpiffeId],
    /// Where the HBONE server listens (`dst_ip:15008` or the waypoint's).
    pub hbone_address: SocketAddr,
    /// The `:authority`: the original destination.
    pub authority: SocketAddr,
    /// The original source, sent as `forwarded: for="..."`.
    pub forwarded_for: SocketAddr,
    /// The source workload's `baggage` header value, if it has one.
    pub baggage: Option<&'a str>,
    /// Makes the TCP socket (inside the source pod's netns in production).
    pub sockets: &'a dyn SocketFactory,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    source: SpiffeId,
    expected: Vec<SpiffeId>,
    address: SocketAddr,
}

#[derive(Debug)]
struct PooledConnection {
    sender: h2::client::SendRequest<Bytes>,
    open_streams: AtomicUsize,
    closed: Arc<AtomicBool>,
    certificate_serial: String,
    /// When the last tunnel ended; `None` while tunnels are open. Guarded by the list's lock
    /// for decisions (reserve and release both hold it).
    idle_since: Mutex<Option<Instant>>,
}

impl PooledConnection {
    fn idle_for(&self, now: Instant) -> Option<Duration> {
        let since = *self
            .idle_since
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        since.map(|since| now.saturating_duration_since(since))
    }

    fn set_idle_since(&self, value: Option<Instant>) {
        *self
            .idle_since
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = value;
    }
}

/// Gives a pool slot back when a tunnel ends; the last one out schedules the idle release.
#[derive(Debug)]
struct StreamSlot {
    connection: Arc<PooledConnection>,
    list: ConnectionList,
    idle_timeout: Duration,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if self.connection.open_streams.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        self.connection.set_idle_since(Some(Instant::now()));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let list = self.list.clone();
        let timeout = self.idle_timeout;
        runtime.spawn(async move {
            tokio::time::sleep(timeout).await;
            release_idle(&list, timeout).await;
        });
    }
}

/// Drops the pool's handle of every connection idle for at least `timeout`. With no handle
/// and no stream left, h2 sends GOAWAY and the TLS connection closes.
async fn release_idle(list: &ConnectionList, timeout: Duration) {
    let now = Instant::now();
    let mut connections = list.lock().await;
    let before = connections.len();
    connections.retain(|connection| {
        connection.open_streams.load(Ordering::Acquire) > 0
            || connection.idle_for(now).is_none_or(|idle| idle < timeout)
    });
    if connections.len() < before {
        tracing::debug!(
            released = before - connections.len(),
            kept = connections.len(),
            "released idle HBONE client connections"
        );
    }
}

type ConnectionList = Arc<tokio::sync::Mutex<Vec<Arc<PooledConnection>>>>;

/// Told the HBONE server address of each pooled connection closed because a PING went
/// unanswered (the proxy counts it).
#[derive(Clone)]
struct KeepaliveTimeoutHook(Arc<dyn Fn(SocketAddr) + Send + Sync>);

impl std::fmt::Debug for KeepaliveTimeoutHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeepaliveTimeoutHook")
    }
}

/// The pool of outgoing HBONE connections.
#[derive(Debug)]
pub struct HbonePool {
    store: Arc<CertificateStore>,
    pools: Mutex<HashMap<PoolKey, ConnectionList>>,
    next_id: AtomicU64,
    connections_opened: AtomicU64,
    idle_timeout_ms: AtomicU64,
    keepalive: Keepalive,
    on_keepalive_timeout: Option<KeepaliveTimeoutHook>,
}

impl HbonePool {
    /// A pool presenting certificates from `store`.
    pub fn new(store: Arc<CertificateStore>) -> Self {
        Self {
            store,
            pools: Mutex::default(),
            next_id: AtomicU64::new(1),
            connections_opened: AtomicU64::new(0),
            idle_timeout_ms: AtomicU64::new(DEFAULT_POOL_IDLE_TIMEOUT.as_millis() as u64),
            keepalive: Keepalive::default(),
            on_keepalive_timeout: None,
        }
    }

    /// Pings every connection per `keepalive` instead of the defaults, and calls
    /// `on_timeout(server address)` for each one closed because a PING went unanswered.
    pub fn with_keepalive(
        mut self,
        keepalive: Keepalive,
        on_timeout: impl Fn(SocketAddr) + Send + Sync + 'static,
    ) -> Self {
        self.keepalive = keepalive;
        self.on_keepalive_timeout = Some(KeepaliveTimeoutHook(Arc::new(on_timeout)));
        self
    }

    /// How long a connection without tunnels is kept for reuse (applies to tunnels that end
    /// from now on).
    pub fn set_idle_timeout(&self, timeout: Duration) {
        let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.idle_timeout_ms.store(millis, Ordering::Relaxed);
    }

    fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.load(Ordering::Relaxed))
    }

    /// Pooled connections currently kept, over every destination.
    pub async fn pooled_connections(&self) -> usize {
        let lists: Vec<ConnectionList> = self
            .pools
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .cloned()
            .collect();
        let mut total = 0;
        for list in lists {
            total += list.lock().await.len();
        }
        total
    }

    /// How many TLS connections this pool has opened so far.
    pub fn connections_opened(&self) -> u64 {
        self.connections_opened.load(Ordering::Relaxed)
    }

    /// Opens a tunnel: a `CONNECT` stream on a pooled (or new) connection, answered `200`.
    ///
    /// A pooled connection whose server is going away (it sent `GOAWAY`, e.g. an old ztunnel
    /// draining during an upgrade) refuses new streams without processing them; such a
    /// connection takes no more tunnels and the tunnel is retried once on a new connection.
    pub async fn connect(&self, request: TunnelRequest<'_>) -> Result<H2Stream, HboneError> {
        match self.connect_once(&request).await {
            Err(Attempt::Unprocessed(error)) => {
                tracing::debug!(peer = %request.hbone_address, %error, "HBONE connection is going away; retrying the tunnel on a new connection");
                self.connect_once(&request)
                    .await
                    .map_err(Attempt::into_error)
            }
            other => other.map_err(Attempt::into_error),
        }
    }

    async fn connect_once(&self, request: &TunnelRequest<'_>) -> Result<H2Stream, Attempt> {
        let slot = self.reserve(request).await?;
        let h2_error = |source: h2::Error| {
            let unprocessed = source.is_go_away() && source.is_remote()
                || source.reason() == Some(h2::Reason::REFUSED_STREAM);
            let error = HboneError::H2 {
                peer: request.hbone_address,
                source,
            };
            if unprocessed {
                slot.connection.closed.store(true, Ordering::Release);
                Attempt::Unprocessed(error)
            } else {
                Attempt::Failed(error)
            }
        };
        let mut sender = slot
            .connection
            .sender
            .clone()
            .ready()
            .await
            .map_err(h2_error)?;
        let mut connect = Request::builder()
            .method(Method::CONNECT)
            .uri(request.authority.to_string())
            .header("forwarded", format!("for=\"{}\"", request.forwarded_for))
            .header("traceparent", new_traceparent());
        if let Some(baggage) = request.baggage {
            connect = connect.header(super::baggage::HEADER, baggage);
        }
        let connect = connect.body(()).map_err(|error| HboneError::Request {
            authority: request.authority,
            detail: error.to_string(),
        })?;
        let (response, send) = sender.send_request(connect, false).map_err(h2_error)?;
        let Ok(response) = tokio::time::timeout(RESPONSE_TIMEOUT, response).await else {
            // The peer may be gone without closing the connection (node down, packets
            // dropped): no new tunnel goes on this connection; its open ones run their course.
            slot.connection.closed.store(true, Ordering::Release);
            return Err(Attempt::Failed(HboneError::ResponseTimeout {
                peer: request.hbone_address,
                authority: request.authority,
                timeout: RESPONSE_TIMEOUT,
            }));
        };
        let response = response.map_err(h2_error)?;
        if response.status() != StatusCode::OK {
            return Err(Attempt::Failed(HboneError::Refused {
                peer: request.hbone_address,
                authority: request.authority,
                status: response.status(),
            }));
        }
        let peer_baggage = super::baggage::Baggage::parse(
            response
                .headers()
                .get_all(super::baggage::HEADER)
                .iter()
                .filter_map(|value| value.to_str().ok()),
        );
        Ok(H2Stream::new(send, response.into_body())
            .with_guard(slot)
            .with_peer_baggage(peer_baggage))
    }

    /// Takes a stream slot on a usable connection, opening one if none has room.
    async fn reserve(&self, request: &TunnelRequest<'_>) -> Result<StreamSlot, HboneError> {
        let certificate = self
            .store
            .certificate_or_wait(request.source, CERTIFICATE_WAIT)
            .await?;
        let mut expected = request.expected.to_vec();
        expected.sort();
        let key = PoolKey {
            source: request.source.clone(),
            expected: expected.clone(),
            address: request.hbone_address,
        };
        let list = self
            .pools
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let mut connections = list.lock().await;
        // Closed connections go; those made with a rotated certificate keep their open tunnels
        // (the h2 task owns them) but take no new ones.
        connections.retain(|connection| {
            !connection.closed.load(Ordering::Acquire)
                && connection.certificate_serial == certificate.serial
        });
        let slot = |connection: &Arc<PooledConnection>| {
            connection.open_streams.fetch_add(1, Ordering::AcqRel);
            connection.set_idle_since(None);
            StreamSlot {
                connection: connection.clone(),
                list: list.clone(),
                idle_timeout: self.idle_timeout(),
            }
        };
        if let Some(connection) = connections.iter().find(|connection| {
            connection.open_streams.load(Ordering::Acquire) < CLIENT_STREAMS_PER_CONNECTION
        }) {
            return Ok(slot(connection));
        }
        let connection = Arc::new(
            self.open_connection(request, &certificate, expected)
                .await?,
        );
        connections.push(connection.clone());
        Ok(slot(&connection))
    }

    async fn open_connection(
        &self,
        request: &TunnelRequest<'_>,
        certificate: &crate::identity::WorkloadCertificate,
        expected: Vec<SpiffeId>,
    ) -> Result<PooledConnection, HboneError> {
        let address = request.hbone_address;
        let connect_error = |source| HboneError::Connect { address, source };
        let socket = request
            .sockets
            .new_tcp_socket(address.is_ipv6())
            .map_err(connect_error)?;
        // A peer that is gone without a trace (node down, packets dropped) would otherwise hold
        // the client for the kernel's SYN retries (minutes); past the limit the caller may try
        // another endpoint.
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(address))
            .await
            .map_err(|_| {
                connect_error(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {CONNECT_TIMEOUT:?}"),
                ))
            })?
            .map_err(connect_error)?;
        let _ = tcp.set_nodelay(true);
        let config = tls::client_config(&self.store, certificate, expected)?;
        let handshake = TlsConnector::from(config).connect(
            ServerName::IpAddress(address.ip().into()),
            super::transport::transport(tcp),
        );
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| HboneError::HandshakeTimeout {
                peer: address,
                timeout: HANDSHAKE_TIMEOUT,
            })?
            .map_err(|error| handshake_error(address, error))?;
        if tls.get_ref().1.alpn_protocol() != Some(tls::ALPN_H2) {
            return Err(HboneError::NoAlpn { peer: address });
        }
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_send_buffer_size(SEND_BUFFER)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|source| HboneError::H2 {
                peer: address,
                source,
            })?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.connections_opened.fetch_add(1, Ordering::Relaxed);
        let closed = Arc::new(AtomicBool::new(false));
        let closed_by_task = closed.clone();
        let ping_pong = connection.ping_pong();
        let keepalive = self.keepalive;
        let on_keepalive_timeout = self.on_keepalive_timeout.clone();
        tokio::spawn(async move {
            let pings = async move {
                match ping_pong {
                    Some(ping_pong) => ping_until_unanswered(ping_pong, keepalive).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = &mut connection => if let Err(error) = result {
                    tracing::debug!(connection = id, peer = %address, %error, "HBONE client connection ended with an error");
                },
                failure = pings => match failure {
                    // Dropping the connection closes the socket; its tunnels end with an error.
                    PingFailure::Unanswered(timeout) => {
                        tracing::warn!(connection = id, peer = %address, ?timeout,
                            "HBONE server did not answer a keep-alive PING; connection closed");
                        if let Some(hook) = on_keepalive_timeout {
                            (hook.0)(address);
                        }
                    }
                    PingFailure::Connection(error) => {
                        tracing::debug!(connection = id, peer = %address, %error, "HBONE client connection ended");
                    }
                },
            }
            closed_by_task.store(true, Ordering::Release);
        });
        tracing::debug!(connection = id, peer = %address, source = %request.source,
            serial = %certificate.serial, "HBONE client connection opened");
        Ok(PooledConnection {
            sender,
            open_streams: AtomicUsize::new(0),
            closed,
            certificate_serial: certificate.serial.clone(),
            idle_since: Mutex::new(None),
        })
    }
}

/// How one attempt to open a tunnel failed.
enum Attempt {
    /// The server did not process the stream (`GOAWAY`, `REFUSED_STREAM`): safe to retry.
    Unprocessed(HboneError),
    /// Anything else.
    Failed(HboneError),
}

impl Attempt {
    fn into_error(self) -> HboneError {
        match self {
            Attempt::Unprocessed(error) | Attempt::Failed(error) => error,
        }
    }
}

impl From<HboneError> for Attempt {
    fn from(error: HboneError) -> Self {
        Attempt::Failed(error)
    }
}

/// A new W3C `traceparent` (version 00, random trace and span ids, sampled).
fn new_traceparent() -> String {
    let mut random = [0u8; 24];
    if tls::provider().secure_random.fill(&mut random).is_err() {
        // Only tracing suffers; keep the tunnel.
        random = [1; 24];
    }
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut header = String::with_capacity(55);
    header.push_str("00-");
    for (index, byte) in random.iter().enumerate() {
        if index == 16 {
            header.push('-');
        }
        header.push(char::from(DIGITS[usize::from(byte >> 4)]));
        header.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    header.push_str("-01");
    header
}

#[cfg(test)]
mod tests {
    use super::new_traceparent;

    #[test]
    fn traceparent_is_version_00_with_random_ids_and_sampled() {
        let header = new_traceparent();
        let parts: Vec<&str> = header.split('-').collect();
        assert_eq!(parts.len(), 4, "{header}");
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1].len(), 32, "trace id in {header}");
        assert_eq!(parts[2].len(), 16, "span id in {header}");
        assert_eq!(parts[3], "01");
        let hex = |part: &str| {
            part.bytes()
                .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
        };
        assert!(hex(parts[1]) && hex(parts[2]), "lowercase hex in {header}");
        assert_ne!(new_traceparent(), header, "each tunnel gets its own ids");
    }
}
