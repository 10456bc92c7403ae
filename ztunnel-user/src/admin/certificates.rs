//! `/config_dump`'s certificates from the identity module's store: identity, serial, SANs and
//! validity of each chain in force. Only public facts are read; keys never leave the store.

use std::sync::Arc;

use super::{CertificateDetails, CertificateInfo, CertificateSummary};
use crate::identity::{CertificateStore, certificate::CertificateFacts};

impl CertificateInfo for CertificateStore {
    fn certificates(&self) -> Vec<CertificateSummary> {
        let mut summaries: Vec<CertificateSummary> = CertificateStore::certificates(self)
            .iter()
            .map(|certificate| CertificateSummary {
                identity: certificate.identity.to_string(),
                state: "Available".to_owned(),
                cert_chain: certificate
                    .chain()
                    .iter()
                    .filter_map(|der| match CertificateFacts::parse(der) {
                        Ok(facts) => Some(details(facts)),
                        Err(error) => {
                            tracing::warn!(identity = %certificate.identity, %error,
                                "cannot describe a certificate of the chain in /config_dump");
                            None
                        }
                    })
                    .collect(),
                // The store keeps trust anchors as rustls does, without their validity.
                root_certs: Vec::new(),
            })
            .collect();
        summaries.sort_by(|left, right| left.identity.cmp(&right.identity));
        summaries
    }
}

impl CertificateInfo for Arc<CertificateStore> {
    fn certificates(&self) -> Vec<CertificateSummary> {
        CertificateInfo::certificates(self.as_ref())
    }
}

fn details(facts: CertificateFacts) -> CertificateDetails {
    CertificateDetails {
        serial_number: facts.serial,
        subject_alt_names: facts.uris,
        valid_from: facts.not_before,
        expiration_time: facts.not_after,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::identity::{CertificateAuthority, SpiffeId};

    #[test]
    fn the_store_reports_each_identity_with_its_expiry_and_no_key() {
        let authority = Arc::new(CertificateAuthority::generate("cluster.local").unwrap());
        let store = Arc::new(
            CertificateStore::with_authority(authority, "cluster.local", Duration::from_secs(3600))
                .unwrap(),
        );
        let sleep = SpiffeId::new("cluster.local", "ns1", "sleep");
        let issued = store.certificate(&sleep).unwrap();
        let summaries = CertificateInfo::certificates(&store);
        assert_eq!(summaries.len(), 1);
        let summary = &summaries[0];
        assert_eq!(summary.identity, "spiffe://cluster.local/ns/ns1/sa/sleep");
        let leaf = &summary.cert_chain[0];
        assert_eq!(leaf.serial_number, issued.serial);
        assert_eq!(leaf.expiration_time, issued.not_after);
        assert_eq!(
            leaf.subject_alt_names,
            ["spiffe://cluster.local/ns/ns1/sa/sleep"]
        );
        let json = serde_json::to_string(&summaries).unwrap();
        assert!(
            !json.to_lowercase().contains("private") && !json.contains("BEGIN"),
            "{json}"
        );
    }
}
