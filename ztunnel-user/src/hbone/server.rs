//! The HBONE server: TLS accept, then one h2 connection whose `CONNECT` streams a
//! [`ConnectHandler`] answers.
//!
//! The server itself answers `400` to anything that is not a well-formed `CONNECT ip:port`; the
//! handler decides the rest (`400` for an authority that is not its pod, `401` denied by policy,
//! `503` no such workload or upstream refused, `200` then bytes).

use std::{
    future::{Future, poll_fn},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use h2::{RecvStream, server::SendResponse};
use http::{Method, Request, Response, StatusCode};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::{
    CONNECTION_WINDOW, H2Stream, HboneError, MAX_FRAME_SIZE, SEND_BUFFER,
    SERVER_MAX_CONCURRENT_STREAMS, SERVER_MAX_HEADER_LIST_SIZE, STREAM_WINDOW, handshake_error,
    keepalive::{Keepalive, OpenStreams, PingFailure, ping_until_unanswered},
    transport::{Transport, transport},
};
use crate::identity::{SpiffeId, certificate::CertificateFacts, tls::ALPN_H2};

/// Who is at the other end of an HBONE connection, as its certificate proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The client's TCP address.
    pub address: SocketAddr,
    /// The identity in the client certificate's URI SAN.
    pub identity: SpiffeId,
    /// The client certificate's serial, hex.
    pub certificate_serial: String,
}

/// What a well-formed `CONNECT` asks for: the part of a request that depends only on its
/// headers (see [`parse_connect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectTarget {
    /// The `:authority`: the original destination the client wants.
    pub authority: SocketAddr,
    /// The `forwarded` header's `for=` value (the original source), if sent.
    pub forwarded_for: Option<SocketAddr>,
    /// The W3C `traceparent` header, if sent.
    pub traceparent: Option<String>,
    /// What the `baggage` header said about the source (empty if none was sent).
    pub baggage: super::baggage::Baggage,
}

/// Why a request is answered `400` before any handler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// The method is not `CONNECT`.
    #[error("not a CONNECT request")]
    NotConnect,
    /// `CONNECT` without `:authority`.
    #[error("CONNECT without :authority")]
    NoAuthority,
    /// The authority is a name, or has no port: HBONE carries `ip:port` only.
    #[error(":authority is not ip:port")]
    AuthorityNotAddress,
}

/// One `CONNECT` request, parsed, with the peer it came from.
#[derive(Debug, Clone)]
pub struct HboneRequest {
    /// The `:authority`: the original destination the client wants.
    pub authority: SocketAddr,
    /// The `forwarded` header's `for=` value (the original source), if sent.
    pub forwarded_for: Option<SocketAddr>,
    /// The W3C `traceparent` header, if sent.
    pub traceparent: Option<String>,
    /// What the `baggage` header said about the source (empty if none was sent).
    pub baggage: super::baggage::Baggage,
    /// The peer.
    pub peer: Arc<PeerInfo>,
}

/// The answer to one request: refuse with a status, or accept and get the tunnel.
#[derive(Debug)]
pub struct Answer {
    respond: SendResponse<Bytes>,
    body: RecvStream,
}

impl Answer {
    /// Answers `status` (400, 401, 503, ...) and ends the stream.
    pub fn refuse(mut self, status: StatusCode) {
        send_status(&mut self.respond, status);
    }

    /// Answers `200` and returns the tunnel.
    pub fn accept(self) -> Result<H2Stream, h2::Error> {
        self.accept_with_baggage(None)
    }

    /// Answers `200` carrying `baggage` (the destination workload's, as Istio's ztunnel sends
    /// it) and returns the tunnel.
    pub fn accept_with_baggage(mut self, baggage: Option<&str>) -> Result<H2Stream, h2::Error> {
        let mut response = Response::builder().status(StatusCode::OK);
        if let Some(baggage) = baggage {
            response = response.header(super::baggage::HEADER, baggage);
        }
        let response = response.body(()).unwrap_or_default();
        let send = self.respond.send_response(response, false)?;
        Ok(H2Stream::new(send, self.body))
    }
}

/// Decides what happens to each `CONNECT` stream.
pub trait ConnectHandler: Send + Sync + 'static {
    /// Handles one stream; must call [`Answer::refuse`] or [`Answer::accept`].
    fn handle(&self, request: HboneRequest, answer: Answer) -> impl Future<Output = ()> + Send;
}

/// Runs the TLS handshake (TLS 1.3, ALPN h2, client certificate per `acceptor`'s config) and
/// returns the stream with the peer's proven identity. A client that has not finished the
/// handshake after `timeout` (a stalled or slow-loris client) is dropped.
pub async fn accept_tls(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer_address: SocketAddr,
    timeout: Duration,
) -> Result<(TlsStream<Transport>, PeerInfo), HboneError> {
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(timeout, acceptor.accept(transport(tcp)))
        .await
        .map_err(|_| HboneError::HandshakeTimeout {
            peer: peer_address,
            timeout,
        })?
        .map_err(|error| handshake_error(peer_address, error))?;
    let (_, session) = tls.get_ref();
    if session.alpn_protocol() != Some(ALPN_H2) {
        return Err(HboneError::NoAlpn { peer: peer_address });
    }
    let leaf = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or_else(|| HboneError::Handshake {
            peer: peer_address,
            reason: "no_client_certificate",
            detail: "client presented no certificate".to_owned(),
        })?;
    let facts = CertificateFacts::parse(leaf)?;
    let identity = facts
        .identity
        .ok_or(crate::identity::IdentityError::NoSpiffeSan { found: facts.uris })?;
    let peer = PeerInfo {
        address: peer_address,
        identity,
        certificate_serial: facts.serial,
    };
    Ok((tls, peer))
}

/// How long a served connection may take to start, and how it is kept alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// The client's HTTP/2 preface must arrive within this after the TLS handshake.
    pub preface_timeout: Duration,
    /// PINGs with a deadline, and the bound on a connection that carries no stream.
    pub keepalive: Keepalive,
}

/// How a served connection ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The client closed it (or went away).
    Closed,
    /// Draining: GOAWAY was sent and the open streams ran to their end.
    Drained,
    /// It carried no stream for the given time: GOAWAY was sent.
    Unused(Duration),
}

/// Serves the h2 connection until the client closes it, until `shutdown` completes (then a
/// GOAWAY stops new streams and open ones run to their end), or until it has carried no stream
/// for `limits.keepalive.unused_timeout` (GOAWAY too). The client's HTTP/2 preface must arrive
/// within `limits.preface_timeout`; a client that stops answering PINGs is cut off
/// ([`HboneError::KeepaliveTimeout`]).
///
/// `io` is the TLS stream in production; anything that reads and writes will do (the fuzz
/// target drives this function over an in-memory pipe).
pub async fn serve<H, T>(
    io: T,
    peer: PeerInfo,
    handler: Arc<H>,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) -> Result<ConnectionEnd, HboneError>
where
    H: ConnectHandler,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let peer = Arc::new(peer);
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_concurrent_streams(SERVER_MAX_CONCURRENT_STREAMS)
        .max_send_buffer_size(SEND_BUFFER)
        .max_header_list_size(SERVER_MAX_HEADER_LIST_SIZE)
        .handshake::<_, Bytes>(io);
    let mut connection = tokio::time::timeout(limits.preface_timeout, handshake)
        .await
        .map_err(|_| HboneError::HandshakeTimeout {
            peer: peer.address,
            timeout: limits.preface_timeout,
        })?
        .map_err(|source| HboneError::H2 {
            peer: peer.address,
            source,
        })?;
    let keepalive = limits.keepalive;
    let ping_pong = connection.ping_pong();
    let pings = async move {
        match ping_pong {
            Some(ping_pong) => ping_until_unanswered(ping_pong, keepalive).await,
            None => std::future::pending().await,
        }
    };
    let streams = OpenStreams::default();
    let unused = streams.unused_for(keepalive.unused_timeout);
    tokio::pin!(shutdown, pings, unused);
    let mut end = ConnectionEnd::Closed;
    loop {
        let closing = end != ConnectionEnd::Closed;
        tokio::select! {
            next = connection.accept() => match next {
                Some(Ok((request, respond))) => {
                    let handler = handler.clone();
                    let peer = peer.clone();
                    let stream = streams.opened();
                    tokio::spawn(async move {
                        dispatch(request, respond, peer, handler).await;
                        drop(stream);
                    });
                }
                Some(Err(source)) => {
                    if source.is_go_away() || source.is_io() {
                        tracing::debug!(peer = %peer.address, error = %source, "HBONE connection ended");
                        return Ok(end);
                    }
                    return Err(HboneError::H2 { peer: peer.address, source });
                }
                None => return Ok(end),
            },
            failure = &mut pings => return match failure {
                PingFailure::Unanswered(timeout) => {
                    // A dead peer reads nothing: the GOAWAY is a courtesy, bounded like a PING.
                    connection.abrupt_shutdown(h2::Reason::NO_ERROR);
                    let closed = poll_fn(|cx| connection.poll_closed(cx));
                    let _ = tokio::time::timeout(timeout, closed).await;
                    Err(HboneError::KeepaliveTimeout { peer: peer.address, timeout })
                }
                PingFailure::Connection(source) => {
                    tracing::debug!(peer = %peer.address, error = %source, "HBONE connection ended");
                    Ok(end)
                }
            },
            () = &mut shutdown, if !closing => {
                tracing::debug!(peer = %peer.address, "draining HBONE connection: GOAWAY sent");
                connection.graceful_shutdown();
                end = ConnectionEnd::Drained;
            }
            () = &mut unused, if !closing => {
                tracing::debug!(peer = %peer.address, timeout = ?keepalive.unused_timeout,
                    "HBONE connection carried no stream for the unused timeout: GOAWAY sent");
                connection.graceful_shutdown();
                end = ConnectionEnd::Unused(keepalive.unused_timeout);
            }
        }
    }
}

async fn dispatch<H: ConnectHandler>(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: Arc<PeerInfo>,
    handler: Arc<H>,
) {
    let (parts, body) = request.into_parts();
    match parse_connect(&parts) {
        Ok(target) => {
            let request = HboneRequest {
                authority: target.authority,
                forwarded_for: target.forwarded_for,
                traceparent: target.traceparent,
                baggage: target.baggage,
                peer,
            };
            handler.handle(request, Answer { respond, body }).await
        }
        Err(why) => {
            tracing::info!(peer = %peer.address, identity = %peer.identity, method = %parts.method,
                uri = %parts.uri, %why, "HBONE request refused with 400");
            send_status(&mut respond, StatusCode::BAD_REQUEST);
        }
    }
}

/// Checks that a request is a `CONNECT ip:port` and reads the headers HBONE uses. Anything it
/// refuses is answered `400`.
pub fn parse_connect(parts: &http::request::Parts) -> Result<ConnectTarget, BadRequest> {
    if parts.method != Method::CONNECT {
        return Err(BadRequest::NotConnect);
    }
    let authority = parts
        .uri
        .authority()
        .ok_or(BadRequest::NoAuthority)?
        .as_str()
        .parse::<SocketAddr>()
        .map_err(|_| BadRequest::AuthorityNotAddress)?;
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let forwarded_for = header("forwarded").and_then(|value| parse_forwarded_for(&value));
    let baggage = super::baggage::Baggage::parse(
        parts
            .headers
            .get_all(super::baggage::HEADER)
            .iter()
            .filter_map(|value| value.to_str().ok()),
    );
    Ok(ConnectTarget {
        authority,
        forwarded_for,
        traceparent: header("traceparent"),
        baggage,
    })
}

/// Reads `for="ip:port"` (or `for="[v6]:port"`) from a `forwarded` header.
pub fn parse_forwarded_for(value: &str) -> Option<SocketAddr> {
    value.split([';', ',']).find_map(|element| {
        let (key, value) = element.trim().split_once('=')?;
        if !key.eq_ignore_ascii_case("for") {
            return None;
        }
        value.trim_matches('"').parse().ok()
    })
}

fn send_status(respond: &mut SendResponse<Bytes>, status: StatusCode) {
    let response = Response::builder()
        .status(status)
        .body(())
        .unwrap_or_default();
    if let Err(error) = respond.send_response(response, true) {
        tracing::debug!(%error, %status, "could not send HBONE answer; the client is gone");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_forwarded_for() {
        assert_eq!(
            parse_forwarded_for(r#"for="10.0.0.1:4000""#),
            "10.0.0.1:4000".parse().ok()
        );
        assert_eq!(
            parse_forwarded_for(r#"proto=http; for="[2001:db8::1]:80""#),
            "[2001:db8::1]:80".parse().ok()
        );
        assert_eq!(parse_forwarded_for("by=x"), None);
    }

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request").into_parts().0
    }

    #[test]
    fn a_connect_to_ip_and_port_is_accepted_with_its_headers() {
        let request = parts(
            "CONNECT",
            "198.18.1.2:80",
            &[
                ("forwarded", r#"for="198.18.2.3:4000""#),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
            ],
        );
        let target = parse_connect(&request).expect("accepted");
        assert_eq!(target.authority, "198.18.1.2:80".parse().unwrap());
        assert_eq!(target.forwarded_for, "198.18.2.3:4000".parse().ok());
        assert!(target.traceparent.is_some());
        let v6 = parts("CONNECT", "[2001:db8::2]:8080", &[]);
        assert_eq!(
            parse_connect(&v6).expect("v6").authority,
            "[2001:db8::2]:8080".parse().unwrap()
        );
    }

    #[test]
    fn anything_but_connect_to_ip_and_port_is_a_bad_request() {
        let cases = [
            ("GET", "https://198.18.1.2:80/", BadRequest::NotConnect),
            (
                "CONNECT",
                "web.default.svc:80",
                BadRequest::AuthorityNotAddress,
            ),
            ("CONNECT", "198.18.1.2", BadRequest::AuthorityNotAddress),
            ("CONNECT", "/path-only", BadRequest::NoAuthority),
        ];
        for (method, uri, expected) in cases {
            assert_eq!(
                parse_connect(&parts(method, uri, &[])),
                Err(expected),
                "{method} {uri}"
            );
        }
    }
}
