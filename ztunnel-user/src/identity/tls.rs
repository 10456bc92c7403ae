//! The TLS configurations of HBONE (docs/architecture.md, "HBONE on the wire"): TLS 1.3 only, ALPN `h2`, no SNI, client
//! certificate required, identities checked by [`super::verify`].

use std::sync::{Arc, OnceLock};

use rustls::{
    ClientConfig, ServerConfig,
    client::ResolvesClientCert,
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use super::{
    CertificateStore, IdentityError, SpiffeId, WorkloadCertificate,
    verify::{ExpectedIdentityServerVerifier, TrustDomainClientVerifier},
};

/// The only ALPN protocol HBONE speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// The crypto provider every HBONE configuration uses: built once (its cipher suite and
/// key-exchange lists are allocations), shared after that.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// A server configuration presenting `identity`'s current certificate (looked up at each
/// handshake, so a rotation applies to the next connection) and accepting clients of the
/// store's trust domain.
pub fn server_config(
    store: Arc<CertificateStore>,
    identity: SpiffeId,
) -> Result<Arc<ServerConfig>, IdentityError> {
    let provider = provider();
    let verifier =
        TrustDomainClientVerifier::new(store.roots(), store.trust_domain(), provider.clone())?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(CurrentCertificate { store, identity }));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration presenting `certificate` and accepting only a server whose identity
/// is one of `expected`.
pub fn client_config(
    store: &CertificateStore,
    certificate: &WorkloadCertificate,
    expected: Vec<SpiffeId>,
) -> Result<Arc<ClientConfig>, IdentityError> {
    let provider = provider();
    let verifier = ExpectedIdentityServerVerifier::new(store.roots(), expected, &provider);
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(FixedCertificate(
            certificate.certified_key.clone(),
        )));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// Resolves the server certificate from the store at each handshake.
#[derive(Debug)]
struct CurrentCertificate {
    store: Arc<CertificateStore>,
    identity: SpiffeId,
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.store.certificate(&self.identity) {
            Ok(certificate) => Some(certificate.certified_key.clone()),
            Err(error) => {
                tracing::error!(identity = %self.identity, %error, "no server certificate; refusing the handshake");
                None
            }
        }
    }
}

/// Always offers one client certificate (the one a pooled connection was made with).
#[derive(Debug)]
struct FixedCertificate(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
