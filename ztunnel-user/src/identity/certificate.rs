//! A workload's certificate chain and private key, and the facts read from them.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use x509_parser::{extensions::GeneralName, prelude::FromDer};

use super::{IdentityError, SpiffeId};

/// A certificate chain (leaf first) with its key, ready for rustls, and the leaf's facts.
#[derive(Debug)]
pub struct WorkloadCertificate {
    /// The identity in the leaf's URI SAN.
    pub identity: SpiffeId,
    /// The leaf's serial number in hex, for logs and `/config_dump`.
    pub serial: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// The chain and signing key as rustls uses them.
    pub certified_key: Arc<CertifiedKey>,
}

impl WorkloadCertificate {
    /// Parses a PEM chain (leaf first) and a PEM private key; `origin` names them in errors.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8], origin: &str) -> Result<Self, IdentityError> {
        let chain = parse_certificates(chain_pem, "certificate chain", origin)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|error| IdentityError::Pem {
            what: "private key",
            origin: origin.to_owned(),
            detail: error.to_string(),
        })?;
        Self::from_der(chain, &key, origin)
    }

    /// Builds from DER parts; `origin` names them in errors.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: &PrivateKeyDer<'_>,
        origin: &str,
    ) -> Result<Self, IdentityError> {
        let leaf = chain.first().ok_or_else(|| IdentityError::Pem {
            what: "certificate chain",
            origin: origin.to_owned(),
            detail: "no certificate found".to_owned(),
        })?;
        let facts = CertificateFacts::parse(leaf)?;
        let signing_key = rustls::crypto::ring::sign::any_supported_type(key).map_err(|error| {
            IdentityError::Key {
                origin: origin.to_owned(),
                detail: error.to_string(),
            }
        })?;
        let certified_key = CertifiedKey::new(chain, signing_key);
        certified_key
            .keys_match()
            .map_err(|error| IdentityError::Key {
                origin: origin.to_owned(),
                detail: format!("does not match the leaf certificate: {error}"),
            })?;
        Ok(Self {
            identity: facts
                .identity
                .ok_or(IdentityError::NoSpiffeSan { found: facts.uris })?,
            serial: facts.serial,
            not_before: facts.not_before,
            not_after: facts.not_after,
            certified_key: Arc::new(certified_key),
        })
    }

    /// The chain as sent on the wire, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified_key.cert
    }

    /// Whether the certificate should be replaced at `now`: past half of its lifetime, as Istio
    /// rotates, or already expired.
    pub fn needs_rotation(&self, now: SystemTime) -> bool {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        match now.duration_since(self.not_before) {
            Ok(age) => age >= lifetime / 2,
            Err(_) => false,
        }
    }
}

/// Parses every `CERTIFICATE` section of a PEM text.
pub fn parse_certificates(
    pem: &[u8],
    what: &'static str,
    origin: &str,
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| IdentityError::Pem {
            what,
            origin: origin.to_owned(),
            detail: error.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(IdentityError::Pem {
            what,
            origin: origin.to_owned(),
            detail: "no CERTIFICATE section found".to_owned(),
        });
    }
    Ok(certificates)
}

/// What ztunnel reads from a certificate.
#[derive(Debug, Clone)]
pub struct CertificateFacts {
    /// The SPIFFE id of the first `spiffe://` URI SAN, if any.
    pub identity: Option<SpiffeId>,
    /// Every URI SAN.
    pub uris: Vec<String>,
    /// Serial number in hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl CertificateFacts {
    /// Parses a DER certificate.
    pub fn parse(der: &CertificateDer<'_>) -> Result<Self, IdentityError> {
        let (_, certificate) = x509_parser::certificate::X509Certificate::from_der(der.as_ref())
            .map_err(|error| IdentityError::X509(error.to_string()))?;
        let mut uris = Vec::new();
        if let Ok(Some(san)) = certificate.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(uri) = name {
                    uris.push((*uri).to_owned());
                }
            }
        }
        let identity = match uris.iter().find(|uri| uri.starts_with("spiffe://")) {
            Some(uri) => Some(uri.parse::<SpiffeId>()?),
            None => None,
        };
        let validity = certificate.validity();
        Ok(Self {
            identity,
            uris,
            serial: certificate.raw_serial_as_string().replace(':', ""),
            not_before: to_system_time(validity.not_before.timestamp()),
            not_after: to_system_time(validity.not_after.timestamp()),
        })
    }
}

/// The SPIFFE identity a peer certificate proves.
pub fn identity_of(der: &CertificateDer<'_>) -> Result<SpiffeId, IdentityError> {
    let facts = CertificateFacts::parse(der)?;
    facts
        .identity
        .ok_or(IdentityError::NoSpiffeSan { found: facts.uris })
}

fn to_system_time(unix_seconds: i64) -> SystemTime {
    if unix_seconds >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix_seconds.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(unix_seconds.unsigned_abs())
    }
}
