//! The HBONE server: TLS accept, then one h2 connection whose `CONNECT` streams a
//! [`ConnectHandler`] answers.
//!
//! The server itself answers `400` to anything that is not a well-formed `CONNECT ip:port`; the
//! handler decides the rest (`400` for an authority that is not its pod, `401` denied by policy,
//! `503` no such workload or upstream refused, `200` then bytes).

use std::{future::Future, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use h2::{RecvStream, server::SendResponse};
use http::{Method, Request, Response, StatusCode};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::{
    CONNECTION_WINDOW, H2Stream, HANDSHAKE_TIMEOUT, HboneError, MAX_FRAME_SIZE, SEND_BUFFER,
    SERVER_MAX_CONCURRENT_STREAMS, STREAM_WINDOW, handshake_error,
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

/// One `CONNECT` request, parsed.
#[derive(Debug, Clone)]
pub struct HboneRequest {
    /// The `:authority`: the original destination the client wants.
    pub authority: SocketAddr,
    /// The `forwarded` header's `for=` value (the original source), if sent.
    pub forwarded_for: Option<SocketAddr>,
    /// The W3C `traceparent` header, if sent.
    pub traceparent: Option<String>,
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
    pub fn accept(mut self) -> Result<H2Stream, h2::Error> {
        let response = Response::builder()
            .status(StatusCode::OK)
            .body(())
            .unwrap_or_default();
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
/// returns the stream with the peer's proven identity.
pub async fn accept_tls(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer_address: SocketAddr,
) -> Result<(TlsStream<TcpStream>, PeerInfo), HboneError> {
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| HboneError::HandshakeTimeout {
            peer: peer_address,
            timeout: HANDSHAKE_TIMEOUT,
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

/// Serves the h2 connection until the client closes it, or until `shutdown` completes: then
/// a GOAWAY stops new streams and open ones run to their end.
pub async fn serve<H: ConnectHandler>(
    tls: TlsStream<TcpStream>,
    peer: PeerInfo,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HboneError> {
    let peer = Arc::new(peer);
    let mut connection = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_concurrent_streams(SERVER_MAX_CONCURRENT_STREAMS)
        .max_send_buffer_size(SEND_BUFFER)
        .handshake::<_, Bytes>(tls)
        .await
        .map_err(|source| HboneError::H2 {
            peer: peer.address,
            source,
        })?;
    tokio::pin!(shutdown);
    let mut draining = false;
    loop {
        tokio::select! {
            next = connection.accept() => match next {
                Some(Ok((request, respond))) => {
                    let handler = handler.clone();
                    let peer = peer.clone();
                    tokio::spawn(async move { dispatch(request, respond, peer, handler).await });
                }
                Some(Err(source)) => {
                    if source.is_go_away() || source.is_io() {
                        tracing::debug!(peer = %peer.address, error = %source, "HBONE connection ended");
                        return Ok(());
                    }
                    return Err(HboneError::H2 { peer: peer.address, source });
                }
                None => return Ok(()),
            },
            () = &mut shutdown, if !draining => {
                tracing::debug!(peer = %peer.address, "draining HBONE connection: GOAWAY sent");
                connection.graceful_shutdown();
                draining = true;
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
    let parsed = parse_request(&parts, peer.clone());
    match parsed {
        Ok(request) => handler.handle(request, Answer { respond, body }).await,
        Err(why) => {
            tracing::info!(peer = %peer.address, identity = %peer.identity, method = %parts.method,
                uri = %parts.uri, why, "HBONE request refused with 400");
            send_status(&mut respond, StatusCode::BAD_REQUEST);
        }
    }
}

fn parse_request(
    parts: &http::request::Parts,
    peer: Arc<PeerInfo>,
) -> Result<HboneRequest, &'static str> {
    if parts.method != Method::CONNECT {
        return Err("not a CONNECT request");
    }
    let authority = parts
        .uri
        .authority()
        .ok_or("CONNECT without :authority")?
        .as_str()
        .parse::<SocketAddr>()
        .map_err(|_| ":authority is not ip:port")?;
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let forwarded_for = header("forwarded").and_then(|value| parse_forwarded_for(&value));
    Ok(HboneRequest {
        authority,
        forwarded_for,
        traceparent: header("traceparent"),
        peer,
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
}
