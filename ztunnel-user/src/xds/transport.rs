//! The gRPC channel to istiod: TLS verified against the mesh root (`--xds-root-cert`), and the
//! headers Istio's ztunnel sends with every stream (the projected service-account token as a
//! bearer token, and the cluster id).

use std::{path::Path, sync::Arc, time::Duration};

use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use super::XdsError;
use crate::identity::{certificate::parse_certificates, tls::provider};

/// Where the control plane is, parsed from `https://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneAddress {
    /// The address as given, for logs.
    pub text: String,
    /// The host name (or IP) its certificate must be valid for.
    pub host: String,
    /// The port.
    pub port: u16,
}

impl ControlPlaneAddress {
    /// Parses `https://host:port` (the scheme may be left out; the port defaults to 15012).
    pub fn parse(text: &str) -> Result<Self, XdsError> {
        let bad = |why: &str| XdsError::Address {
            address: text.to_owned(),
            why: why.to_owned(),
        };
        let uri: http::Uri = if text.contains("://") {
            text.parse()
        } else {
            format!("https://{text}").parse()
        }
        .map_err(|error: http::uri::InvalidUri| bad(&error.to_string()))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad(
                "the control plane is only reached over TLS: use https://",
            ));
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        Ok(Self {
            text: text.to_owned(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: uri.port_u16().unwrap_or(DEFAULT_PORT),
        })
    }
}

/// istiod's TLS xDS port.
pub const DEFAULT_PORT: u16 = 15012;
/// How long a connection attempt to the control plane may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an HTTP/2 ping checks that the control plane is still there.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the stream is dropped (and reconnected).
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS configuration trusting only the roots in `root_cert` (PEM).
pub fn tls_config(root_cert: &Path) -> Result<Arc<ClientConfig>, XdsError> {
    let pem = std::fs::read(root_cert).map_err(|source| XdsError::RootCert {
        path: root_cert.to_owned(),
        detail: source.to_string(),
    })?;
    let origin = root_cert.display().to_string();
    let mut roots = RootCertStore::empty();
    for certificate in
        parse_certificates(&pem, "xDS root certificate", &origin).map_err(|error| {
            XdsError::RootCert {
                path: root_cert.to_owned(),
                detail: error.to_string(),
            }
        })?
    {
        roots.add(certificate).map_err(|error| XdsError::RootCert {
            path: root_cert.to_owned(),
            detail: error.to_string(),
        })?;
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| XdsError::Tls(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Opens a channel to `address`; the TLS handshake checks the server's certificate against
/// the mesh root and the address's host name.
pub async fn connect(
    address: &ControlPlaneAddress,
    tls: Arc<ClientConfig>,
) -> Result<Channel, XdsError> {
    let server_name =
        ServerName::try_from(address.host.clone()).map_err(|error| XdsError::Address {
            address: address.text.clone(),
            why: error.to_string(),
        })?;
    let target = (address.host.clone(), address.port);
    let connector = tower::service_fn(move |_: http::Uri| {
        let connector = TlsConnector::from(tls.clone());
        let server_name = server_name.clone();
        let target = target.clone();
        async move {
            let tcp = TcpStream::connect(target).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    // The URI only names the :authority; the connector above makes the TLS connection.
    let authority = if address.host.contains(':') {
        format!("[{}]:{}", address.host, address.port)
    } else {
        format!("{}:{}", address.host, address.port)
    };
    Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|error| XdsError::Address {
            address: address.text.clone(),
            why: error.to_string(),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        // A control plane that vanished without closing (its node gone) is noticed by HTTP/2
        // pings, not only when TCP gives up minutes later.
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect_with_connector(connector)
        .await
        .map_err(|error| XdsError::Connect {
            address: address.text.clone(),
            detail: error_chain(&error),
        })
}

/// Adds `authorization: Bearer <token>` (the token file is re-read for every stream: a
/// projected token is rotated by the kubelet) and `clusterid`.
pub fn insert_auth_headers<T>(
    request: &mut tonic::Request<T>,
    token_file: Option<&Path>,
    cluster_id: &str,
) -> Result<(), XdsError> {
    let Some(token_file) = token_file else {
        return Ok(());
    };
    let token = std::fs::read_to_string(token_file).map_err(|source| XdsError::Token {
        path: token_file.to_owned(),
        detail: source.to_string(),
    })?;
    let token = token.trim();
    if token.is_empty() {
        return Err(XdsError::Token {
            path: token_file.to_owned(),
            detail: "the file is empty".to_owned(),
        });
    }
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| XdsError::Token {
            path: token_file.to_owned(),
            detail: "the token is not a valid header value".to_owned(),
        })?;
    let cluster = cluster_id.parse().map_err(|_| XdsError::Token {
        path: token_file.to_owned(),
        detail: format!("cluster id {cluster_id:?} is not a valid header value"),
    })?;
    request.metadata_mut().insert("authorization", bearer);
    request.metadata_mut().insert("clusterid", cluster);
    Ok(())
}

/// An error and its causes on one line (tonic's transport errors hide the cause otherwise).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_control_plane_addresses() {
        let istiod = ControlPlaneAddress::parse("https://istiod.istio-system.svc:15012").unwrap();
        assert_eq!(
            (istiod.host.as_str(), istiod.port),
            ("istiod.istio-system.svc", 15012)
        );
        let bare = ControlPlaneAddress::parse("istiod.istio-system.svc").unwrap();
        assert_eq!(bare.port, DEFAULT_PORT);
        let v6 = ControlPlaneAddress::parse("https://[2001:db8::1]:15012").unwrap();
        assert_eq!(v6.host, "2001:db8::1");
        let plaintext = ControlPlaneAddress::parse("http://istiod:15010").unwrap_err();
        assert!(plaintext.to_string().contains("https://"), "{plaintext}");
    }

    #[test]
    fn sends_the_token_as_a_bearer_with_the_cluster_id() {
        let directory = tempfile::tempdir().unwrap();
        let token = directory.path().join("istio-token");
        std::fs::write(&token, "abc.def\n").unwrap();
        let mut request = tonic::Request::new(());
        insert_auth_headers(&mut request, Some(&token), "cluster1").unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer abc.def"
        );
        assert_eq!(request.metadata().get("clusterid").unwrap(), "cluster1");
        std::fs::write(&token, "").unwrap();
        assert!(insert_auth_headers(&mut request, Some(&token), "cluster1").is_err());
        let mut anonymous = tonic::Request::new(());
        insert_auth_headers(&mut anonymous, None, "cluster1").unwrap();
        assert!(anonymous.metadata().get("authorization").is_none());
    }
}
