//! Certificate signing requests as Istio's ztunnel sends them to the CA: a fresh ECDSA P-256
//! key, an empty subject, and the workload's SPIFFE id as the only URI SAN.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};

use super::{IdentityError, SpiffeId};

/// A request and the private key it was made with (which never leaves the process).
pub struct SigningRequest {
    /// The PEM `CERTIFICATE REQUEST`.
    pub csr_pem: String,
    /// The PKCS#8 private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for SigningRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningRequest")
            .field("csr_pem", &self.csr_pem)
            .finish_non_exhaustive()
    }
}

/// A new key and a request for a certificate of `identity`.
pub fn signing_request(identity: &SpiffeId) -> Result<SigningRequest, IdentityError> {
    let fail = |error: rcgen::Error| IdentityError::Issue {
        what: format!("certificate request for {identity}"),
        detail: error.to_string(),
    };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(fail)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into().map_err(fail)?)];
    let request = params.serialize_request(&key).map_err(fail)?;
    Ok(SigningRequest {
        csr_pem: request.pem().map_err(fail)?,
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::identity::{CertificateAuthority, WorkloadCertificate};

    #[test]
    fn a_ca_signs_the_request_of_the_identity_it_names_and_refuses_another() {
        let root = CertificateAuthority::generate("cluster.local").unwrap();
        let intermediate = root.intermediate("cluster-a").unwrap();
        let identity = SpiffeId::new("cluster.local", "default", "sleep");
        let request = signing_request(&identity).unwrap();
        let chain = intermediate
            .sign_request(&request.csr_pem, &identity, Duration::from_secs(3600))
            .unwrap();
        let certificate = WorkloadCertificate::from_pem(
            chain[..chain.len() - 1].concat().as_bytes(),
            request.key_pem.as_bytes(),
            "test",
        )
        .unwrap();
        let other = SpiffeId::new("cluster.local", "default", "admin");
        let refused = intermediate.sign_request(&request.csr_pem, &other, Duration::from_secs(60));
        println!(
            "signed chain of {} PEM blocks for {}; for another identity: {refused:?}",
            chain.len(),
            certificate.identity
        );
        assert_eq!(chain.len(), 3, "leaf, intermediate, root");
        assert_eq!(certificate.identity, identity);
        assert!(refused.is_err());
    }
}
