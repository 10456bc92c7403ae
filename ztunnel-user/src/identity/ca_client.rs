//! The client of Istio's CA (`istio.v1.auth.IstioCertificateService/CreateCertificate`), as
//! Istio's ztunnel calls it: one CSR per identity, the identity also named in the request's
//! `ImpersonatedIdentity` metadata (the node proxy asks on behalf of its pods' service
//! accounts), the projected service-account token as `authorization: Bearer`, the cluster in
//! `clusterid`. TLS to the CA is verified against the mesh root. The answer is the leaf, its
//! intermediates and the root; the leaf and intermediates are what handshakes send.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use hyper_util::rt::TokioIo;
use prost_types::{Struct, Value, value::Kind};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{PrivateKeyDer, ServerName, pem::PemObject};
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use super::{
    IdentityError, SpiffeId, WorkloadCertificate, certificate::parse_certificates, csr, tls,
};
use crate::{
    proto::istio::v1::auth::{
        IstioCertificateRequest, istio_certificate_service_client::IstioCertificateServiceClient,
    },
    socket::{HostSocketFactory, SocketFactory},
};

/// The metadata key naming the identity a node proxy asks for (Istio's ztunnel's key).
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// Why a certificate could not be had from the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    /// `--ca-address` is not `[https://]host:port`.
    #[error("CA address {address:?} is not [https://]host:port: {why}")]
    Address {
        /// The address given.
        address: String,
        /// What is wrong with it.
        why: String,
    },
    /// The token file could not be used.
    #[error("cannot use token file {path}: {detail}")]
    Token {
        /// The token file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The CA refused or could not be reached.
    #[error("CreateCertificate to {address} failed: {status}")]
    Rpc {
        /// The CA's address.
        address: String,
        /// The gRPC status.
        status: Box<tonic::Status>,
    },
    /// The CA's answer is unusable.
    #[error("unusable answer from the CA at {address} for {identity}: {detail}")]
    Answer {
        /// The CA's address.
        address: String,
        /// The identity asked for.
        identity: SpiffeId,
        /// What is wrong with it.
        detail: String,
    },
    /// Building the request or reading the answer's certificates failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// Where the CA is and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct CaClientConfig {
    /// `host:port`, optionally with `https://` (Istio: `istiod.istio-system.svc:15012`).
    pub address: String,
    /// The projected service-account token, sent as a bearer token (re-read for every
    /// request: the kubelet rotates it). Without it no token is sent.
    pub token_file: Option<PathBuf>,
    /// The cluster id sent in `clusterid`.
    pub cluster_id: String,
    /// The lifetime asked for (`validity_duration`); the CA may give another.
    pub lifetime: Duration,
}

/// A client of Istio's CA. Its connection is made on first use and remade after failures.
#[derive(Debug, Clone)]
pub struct CaClient {
    config: CaClientConfig,
    client: IstioCertificateServiceClient<Channel>,
}

impl CaClient {
    /// A client of the CA at `config.address`, whose certificate must chain to `roots`.
    pub fn new(config: CaClientConfig, roots: Arc<RootCertStore>) -> Result<Self, CaClientError> {
        let (host, port) = split_address(&config.address)?;
        let server_name =
            ServerName::try_from(host.clone()).map_err(|error| CaClientError::Address {
                address: config.address.clone(),
                why: error.to_string(),
            })?;
        let mut tls_config = ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(IdentityError::from)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls_config.alpn_protocols = vec![tls::ALPN_H2.to_vec()];
        let connector = TlsConnector::from(Arc::new(tls_config));
        let connect = tower::service_fn(move |_: http::Uri| {
            let (host, connector, server_name) =
                (host.clone(), connector.clone(), server_name.clone());
            async move {
                let address = tokio::net::lookup_host((host.as_str(), port))
                    .await?
                    .next()
                    .ok_or_else(|| std::io::Error::other(format!("{host} has no address")))?;
                // Marked like every ztunnel socket, so capture never takes it.
                let socket = HostSocketFactory.new_tcp_socket(address.is_ipv6())?;
                let tcp = socket.connect(address).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        });
        // The URI names the :authority only; the connector above makes the connection.
        let endpoint = Endpoint::from_shared(format!("http://{}", authority(&config.address)?))
            .map_err(|error| CaClientError::Address {
                address: config.address.clone(),
                why: error.to_string(),
            })?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10));
        let channel = endpoint.connect_with_connector_lazy(connect);
        Ok(Self {
            config,
            client: IstioCertificateServiceClient::new(channel),
        })
    }

    /// The CA's address, for logs.
    pub fn address(&self) -> &str {
        &self.config.address
    }

    /// Asks the CA for a certificate of `identity` with a new key.
    pub async fn fetch(&self, identity: &SpiffeId) -> Result<WorkloadCertificate, CaClientError> {
        let request = csr::signing_request(identity)?;
        let mut call = tonic::Request::new(IstioCertificateRequest {
            csr: request.csr_pem.clone(),
            validity_duration: i64::try_from(self.config.lifetime.as_secs()).unwrap_or(i64::MAX),
            metadata: Some(Struct {
                fields: BTreeMap::from([(
                    IMPERSONATED_IDENTITY.to_owned(),
                    Value {
                        kind: Some(Kind::StringValue(identity.to_string())),
                    },
                )]),
            }),
        });
        self.authenticate(&mut call)?;
        let answer = self
            .client
            .clone()
            .create_certificate(call)
            .await
            .map_err(|status| CaClientError::Rpc {
                address: self.config.address.clone(),
                status: Box::new(status),
            })?
            .into_inner();
        let unusable = |detail: String| CaClientError::Answer {
            address: self.config.address.clone(),
            identity: identity.clone(),
            detail,
        };
        if answer.cert_chain.is_empty() {
            return Err(unusable("no certificate in the answer".to_owned()));
        }
        // The root ends Istio's answer; peers have it already, so it is not sent.
        let mut chain = Vec::new();
        for (index, pem) in answer.cert_chain.iter().enumerate() {
            let certificates = parse_certificates(pem.as_bytes(), "certificate chain", "the CA")?;
            for certificate in certificates {
                if index == 0 || !is_self_signed(&certificate) {
                    chain.push(certificate);
                }
            }
        }
        let key = PrivateKeyDer::from_pem_slice(request.key_pem.as_bytes())
            .map_err(|error| unusable(error.to_string()))?;
        let certificate = WorkloadCertificate::from_der(chain, &key, "the CA's answer")?;
        if &certificate.identity != identity {
            return Err(unusable(format!(
                "the certificate is for {}",
                certificate.identity
            )));
        }
        if certificate.not_after <= SystemTime::now() {
            return Err(unusable("the certificate has already expired".to_owned()));
        }
        Ok(certificate)
    }

    fn authenticate<T>(&self, call: &mut tonic::Request<T>) -> Result<(), CaClientError> {
        let metadata = call.metadata_mut();
        if let Ok(cluster) = self.config.cluster_id.parse() {
            metadata.insert("clusterid", cluster);
        }
        let Some(path) = &self.config.token_file else {
            return Ok(());
        };
        let token_error = |detail: String| CaClientError::Token {
            path: path.clone(),
            detail,
        };
        let token =
            std::fs::read_to_string(path).map_err(|error| token_error(error.to_string()))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(token_error("the file is empty".to_owned()));
        }
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|_| token_error("the token is not a valid header value".to_owned()))?;
        metadata.insert("authorization", bearer);
        Ok(())
    }
}

fn is_self_signed(certificate: &rustls_pki_types::CertificateDer<'_>) -> bool {
    use x509_parser::prelude::FromDer;
    x509_parser::certificate::X509Certificate::from_der(certificate.as_ref())
        .is_ok_and(|(_, parsed)| parsed.subject() == parsed.issuer())
}

/// `host` and `port` of `[https://]host:port` (an IPv6 host in brackets).
fn split_address(address: &str) -> Result<(String, u16), CaClientError> {
    let invalid = |why: &str| CaClientError::Address {
        address: address.to_owned(),
        why: why.to_owned(),
    };
    let rest = address.strip_prefix("https://").unwrap_or(address);
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| invalid("no port"))?;
    let port = port
        .parse()
        .map_err(|_| invalid("the port is not a number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    Ok((host.to_owned(), port))
}

fn authority(address: &str) -> Result<String, CaClientError> {
    let (host, port) = split_address(address)?;
    Ok(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_as_istio_writes_them() {
        assert_eq!(
            split_address("https://istiod.istio-system.svc:15012").unwrap(),
            ("istiod.istio-system.svc".to_owned(), 15012)
        );
        assert_eq!(
            split_address("198.18.0.1:15012").unwrap(),
            ("198.18.0.1".to_owned(), 15012)
        );
        assert_eq!(authority("[::1]:15012").unwrap(), "[::1]:15012");
        assert!(split_address("istiod").is_err());
        assert!(split_address("https://:15012").is_err());
    }
}
