//! The rustls verifiers HBONE uses on top of ordinary chain validation:
//! the server accepts only clients of its own trust domain, and the client accepts a server only
//! if its URI SAN is one of the identities the destination should have.

use std::sync::Arc;

use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, OtherError,
    PeerIncompatible, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    server::{
        ParsedCertificate, WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{IdentityError, SpiffeId, certificate::identity_of};

fn refuse(error: IdentityError) -> TlsError {
    TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

/// Server side: a chain to our roots, then the client's trust domain must be ours.
#[derive(Debug)]
pub struct TrustDomainClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl TrustDomainClientVerifier {
    /// Verifies client chains against `roots` and trust domain against `trust_domain`.
    pub fn new(
        roots: Arc<RootCertStore>,
        trust_domain: &str,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, IdentityError> {
        let chain = WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|error| IdentityError::Tls(TlsError::General(error.to_string())))?;
        Ok(Self {
            chain,
            trust_domain: trust_domain.to_owned(),
        })
    }
}

impl ClientCertVerifier for TrustDomainClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Istio sends no hints; clients have exactly one certificate to offer.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        self.chain
            .verify_client_cert(end_entity, intermediates, now)?;
        let peer = identity_of(end_entity).map_err(refuse)?;
        if peer.trust_domain != self.trust_domain {
            return Err(refuse(IdentityError::WrongTrustDomain {
                peer,
                expected: self.trust_domain.clone(),
            }));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// Client side: a chain to our roots, then the server's identity must be an expected one.
/// The server name (we send no SNI) is not checked: the SPIFFE id is the name.
#[derive(Debug)]
pub struct ExpectedIdentityServerVerifier {
    roots: Arc<RootCertStore>,
    expected: Vec<SpiffeId>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ExpectedIdentityServerVerifier {
    /// Accepts servers chaining to `roots` whose identity is one of `expected`.
    pub fn new(
        roots: Arc<RootCertStore>,
        expected: Vec<SpiffeId>,
        provider: &CryptoProvider,
    ) -> Self {
        Self {
            roots,
            expected,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for ExpectedIdentityServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let peer = identity_of(end_entity).map_err(refuse)?;
        if !self.expected.contains(&peer) {
            let expected = self
                .expected
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(refuse(IdentityError::UnexpectedServerIdentity {
                peer,
                expected,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A short, stable label for why a handshake failed, for logs and the failure metric.
pub fn failure_reason(error: &TlsError) -> &'static str {
    match error {
        TlsError::InvalidCertificate(certificate_error) => match certificate_error {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown_issuer",
            CertificateError::Other(OtherError(inner)) => {
                match inner.downcast_ref::<IdentityError>() {
                    Some(IdentityError::WrongTrustDomain { .. }) => "wrong_trust_domain",
                    Some(IdentityError::UnexpectedServerIdentity { .. }) => "unexpected_identity",
                    Some(_) => "bad_identity",
                    None => "invalid_certificate",
                }
            }
            _ => "invalid_certificate",
        },
        TlsError::NoCertificatesPresented => "no_client_certificate",
        TlsError::PeerIncompatible(
            PeerIncompatible::SupportedVersionsExtensionRequired
            | PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::ServerDoesNotSupportTls12Or13
            | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig,
        ) => "tls_version_not_1_3",
        TlsError::PeerIncompatible(_) => "incompatible_protocol",
        TlsError::NoApplicationProtocol => "no_alpn_h2",
        TlsError::AlertReceived(_) => "alert_received",
        _ => "tls_error",
    }
}

/// A sentence for logs: what failed and what the operator can check.
pub fn failure_detail(error: &TlsError) -> String {
    match error {
        TlsError::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            format!("invalid peer certificate: {inner}")
        }
        TlsError::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => {
            format!(
                "{error}: the certificate does not chain to our trust bundle (issued by another root?)"
            )
        }
        TlsError::PeerIncompatible(_) if failure_reason(error) == "tls_version_not_1_3" => {
            format!("{error}: HBONE requires TLS 1.3")
        }
        TlsError::NoCertificatesPresented => {
            format!("{error}: HBONE requires a client certificate")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rustls::RootCertStore;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

    use super::*;
    use crate::identity::{CertificateAuthority, tls::provider};

    /// root → intermediate → leaf, and a store trusting only the root.
    fn three_levels() -> (Vec<CertificateDer<'static>>, Arc<RootCertStore>, SpiffeId) {
        let root = CertificateAuthority::generate("cluster.local").unwrap();
        let intermediate = root.intermediate("cluster-a").unwrap();
        let identity = SpiffeId::new("cluster.local", "default", "echo");
        let chain = intermediate
            .issue(&identity, Duration::from_secs(3600))
            .unwrap()
            .chain()
            .to_vec();
        let mut roots = RootCertStore::empty();
        roots.add(root.root_der().clone()).unwrap();
        (chain, Arc::new(roots), identity)
    }

    #[test]
    fn both_sides_accept_a_chain_through_an_intermediate_trusting_only_the_root() {
        let (chain, roots, identity) = three_levels();
        println!("chain of {} certificates, 1 trusted root", chain.len());
        assert_eq!(chain.len(), 2, "leaf + intermediate");
        let server_side =
            TrustDomainClientVerifier::new(roots.clone(), "cluster.local", provider()).unwrap();
        server_side
            .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
            .expect("client chain through the intermediate");
        let client_side = ExpectedIdentityServerVerifier::new(roots, vec![identity], &provider());
        client_side
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &ServerName::try_from("unused").unwrap(),
                &[],
                UnixTime::now(),
            )
            .expect("server chain through the intermediate");
    }

    #[test]
    fn a_leaf_without_its_intermediate_is_refused_on_both_sides() {
        let (chain, roots, identity) = three_levels();
        let server_side =
            TrustDomainClientVerifier::new(roots.clone(), "cluster.local", provider()).unwrap();
        let client_error = server_side
            .verify_client_cert(&chain[0], &[], UnixTime::now())
            .unwrap_err();
        let client_side = ExpectedIdentityServerVerifier::new(roots, vec![identity], &provider());
        let server_error = client_side
            .verify_server_cert(
                &chain[0],
                &[],
                &ServerName::try_from("unused").unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap_err();
        println!("without the intermediate: client {client_error}; server {server_error}");
        assert_eq!(failure_reason(&client_error), "unknown_issuer");
        assert_eq!(failure_reason(&server_error), "unknown_issuer");
    }
}
