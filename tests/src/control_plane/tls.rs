//! The control plane's serving certificate, issued from the cluster's mesh root as istiod's is
//! (so that `--xds-root-cert <mesh root>` verifies it), and TLS connections tonic can serve.

use std::{
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use anyhow::Context as _;
use rcgen::{CertificateParams, Issuer, KeyPair, SanType};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The DNS name istiod's certificate carries in a cluster.
pub const ISTIOD_HOSTNAME: &str = "istiod.istio-system.svc";

/// A server configuration presenting a certificate for `ip` and [`ISTIOD_HOSTNAME`], signed by
/// the root in `ca_dir` (`root-cert.pem`, `root-key.pem`).
pub fn server_config(ca_dir: &std::path::Path, ip: IpAddr) -> anyhow::Result<Arc<ServerConfig>> {
    let root_pem = std::fs::read_to_string(ca_dir.join("root-cert.pem"))
        .with_context(|| format!("cannot read {}/root-cert.pem", ca_dir.display()))?;
    let root_key = KeyPair::from_pem(
        &std::fs::read_to_string(ca_dir.join("root-key.pem"))
            .with_context(|| format!("cannot read {}/root-key.pem", ca_dir.display()))?,
    )?;
    let root_der = CertificateDer::from_pem_slice(root_pem.as_bytes())?;
    let issuer = Issuer::from_ca_cert_der(&root_der, root_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![ISTIOD_HOSTNAME.to_owned()])?;
    params.subject_alt_names.push(SanType::IpAddress(ip));
    let certificate = params.signed_by(&key, &issuer)?;
    let chain = vec![certificate.der().clone(), root_der];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A TLS connection tonic's server accepts.
pub struct TlsConnection(pub TlsStream<TcpStream>);

impl Connected for TlsConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
