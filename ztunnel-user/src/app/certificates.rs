//! Building the certificate store the daemon was asked for, and showing it on `/config_dump`.

use std::{sync::Arc, time::Duration};

use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::IdentityArgs;
use crate::{
    admin::config_dump::{CertificateDetails, CertificateInfo, CertificateSummary},
    identity::{
        CertificateStore, IdentityError,
        ca::{CertificateAuthority, ROOT_CERT_FILE, ROOT_KEY_FILE},
    },
};

/// The store `args` describe: the built-in CA from `--ca-dir`, files from `--cert-dir`, or,
/// with neither, a CA generated in memory for this process only (logged: peers on other
/// nodes will not trust it).
pub fn store(args: &IdentityArgs) -> Result<Arc<CertificateStore>, IdentityError> {
    let lifetime = Duration::from_secs(args.cert_lifetime_hours.max(1) * 3600);
    let store = if let Some(directory) = &args.cert_dir {
        CertificateStore::from_files(directory, &args.trust_domain)?
    } else {
        let authority = match &args.ca_dir {
            Some(directory) => CertificateAuthority::load(&directory.join(ROOT_CERT_FILE), &directory.join(ROOT_KEY_FILE))?,
            None => {
                tracing::warn!(
                    "neither --ca-dir nor --cert-dir given: using a root generated for this process only; \
                     other nodes will not trust its certificates"
                );
                CertificateAuthority::generate(&args.trust_domain)?
            }
        };
        CertificateStore::with_authority(Arc::new(authority), &args.trust_domain, lifetime)?
    };
    Ok(Arc::new(store))
}

/// The store as `/config_dump` shows it: identities, serials, validity; never keys.
pub struct Summaries(pub Arc<CertificateStore>);

fn details(der: &CertificateDer<'_>) -> Option<CertificateDetails> {
    let (_, certificate) = X509Certificate::from_der(der.as_ref()).ok()?;
    let validity = certificate.validity();
    let to_time = |time: x509_parser::time::ASN1Time| {
        std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(time.timestamp()).unwrap_or(0))
    };
    let subject_alt_names = certificate
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|extension| {
            extension
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(CertificateDetails {
        serial_number: certificate.raw_serial_as_string().replace(':', ""),
        subject_alt_names,
        valid_from: to_time(validity.not_before),
        expiration_time: to_time(validity.not_after),
    })
}

impl CertificateInfo for Summaries {
    fn certificates(&self) -> Vec<CertificateSummary> {
        self.0
            .certificates()
            .iter()
            .map(|certificate| CertificateSummary {
                identity: certificate.identity.to_string(),
                state: "Available".to_owned(),
                cert_chain: certificate.certified_key.cert.iter().filter_map(details).collect(),
                root_certs: Vec::new(),
            })
            .collect()
    }
}
