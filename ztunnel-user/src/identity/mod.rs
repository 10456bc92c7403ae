//! Workload identity: SPIFFE ids, certificates, the built-in CA and the TLS verifiers.
//!
//! - [`spiffe`]: the `spiffe://<td>/ns/<ns>/sa/<sa>` ids carried in URI SANs.
//! - [`certificate`]: a workload's certificate chain and key, parsed from PEM.
//! - [`ca`]: the built-in CA (`ztunnel ca init`) that issues short-lived workload certificates.
//! - [`ca_client`], [`ca_renewal`]: certificates from Istio's CA, renewed at half-life.
//! - [`csr`]: certificate signing requests for Istio's CA.
//! - [`ca_dir`]: the CA directory layouts `--ca-dir` reads (ours and Istio's plug-in `cacerts`).
//! - [`store`]: the per-service-account certificates in force, from files or the CA, rotated.
//! - [`verify`]: the rustls verifiers that check trust domains and expected identities.
//! - [`tls`]: the TLS 1.3, ALPN `h2` client and server configurations HBONE uses.

pub mod ca;
pub mod ca_client;
pub mod ca_dir;
pub mod ca_renewal;
pub mod certificate;
pub mod csr;
pub mod spiffe;
pub mod store;
pub mod tls;
pub mod verify;

pub use ca::CertificateAuthority;
pub use certificate::WorkloadCertificate;
pub use spiffe::{DEFAULT_TRUST_DOMAIN, SpiffeId, SpiffeIdError};
pub use store::CertificateStore;

use std::path::PathBuf;

/// What went wrong while loading, issuing or checking a certificate.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done (`read`, `write`, `create directory`).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// PEM text did not hold what it should.
    #[error("cannot parse {what} from {origin}: {detail}")]
    Pem {
        /// What was expected (`certificate chain`, `private key`, `trust bundle`).
        what: &'static str,
        /// Where the text came from (a path or a description).
        origin: String,
        /// The parser's complaint.
        detail: String,
    },
    /// A certificate could not be parsed as X.509.
    #[error("cannot parse X.509 certificate: {0}")]
    X509(String),
    /// A certificate carries no usable SPIFFE URI SAN.
    #[error(
        "certificate has no SPIFFE URI SAN (found {found:?}); Istio workload certificates carry exactly one spiffe:// URI"
    )]
    NoSpiffeSan {
        /// The URI SANs that were present.
        found: Vec<String>,
    },
    /// A URI SAN is not a SPIFFE id.
    #[error(transparent)]
    Spiffe(#[from] SpiffeIdError),
    /// A peer from another trust domain.
    #[error("peer identity {peer} is not in trust domain {expected:?}")]
    WrongTrustDomain {
        /// The peer's identity.
        peer: SpiffeId,
        /// Our trust domain.
        expected: String,
    },
    /// A server whose identity is not the one the destination should have.
    #[error("server identity {peer} is not the expected {expected}")]
    UnexpectedServerIdentity {
        /// The server's identity.
        peer: SpiffeId,
        /// The identities that would have been accepted, comma separated.
        expected: String,
    },
    /// The private key is unusable.
    #[error("unusable private key from {origin}: {detail}")]
    Key {
        /// Where the key came from.
        origin: String,
        /// Why it cannot be used.
        detail: String,
    },
    /// Certificate generation failed.
    #[error("cannot issue certificate for {what}: {detail}")]
    Issue {
        /// The subject.
        what: String,
        /// rcgen's error.
        detail: String,
    },
    /// A TLS configuration could not be built.
    #[error("cannot build TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Istio's CA cannot be used.
    #[error(transparent)]
    Ca(Box<ca_client::CaClientError>),
    /// The store has no certificate for an identity and cannot make one.
    #[error("no certificate for {identity}: {detail}")]
    NoCertificate {
        /// The identity asked for.
        identity: SpiffeId,
        /// Why none is available.
        detail: String,
    },
}

impl IdentityError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

impl From<ca_client::CaClientError> for IdentityError {
    fn from(error: ca_client::CaClientError) -> Self {
        Self::Ca(Box::new(error))
    }
}
