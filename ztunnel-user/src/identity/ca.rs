//! The built-in certificate authority: a root (new, or an existing mesh root such as Istio's)
//! that issues short-lived workload certificates for single-machine use.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, string::Ia5String,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{IdentityError, SpiffeId, WorkloadCertificate};

/// File name of the root certificate that `ztunnel ca init` writes.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// File name of the root key that `ztunnel ca init` writes (mode 0600).
pub const ROOT_KEY_FILE: &str = "root-key.pem";
/// Lifetime of a new root.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Tolerance for peers whose clock is a little behind.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// A root certificate and its key.
pub struct CertificateAuthority {
    root_pem: String,
    root_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

/// A workload certificate as PEM text, as it would be written to disk.
#[derive(Debug, Clone)]
pub struct IssuedPem {
    /// Leaf certificate (the chain is just the leaf: the root is the trust bundle).
    pub chain: String,
    /// PKCS#8 private key.
    pub key: String,
}

impl CertificateAuthority {
    /// Makes a new self-signed root for `trust_domain`.
    pub fn generate(trust_domain: &str) -> Result<Self, IdentityError> {
        let fail = |error: rcgen::Error| IdentityError::Issue {
            what: format!("root of {trust_domain}"),
            detail: error.to_string(),
        };
        let key = KeyPair::generate().map_err(fail)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, trust_domain);
        name.push(DnType::CommonName, "ztunnel root CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + ROOT_LIFETIME).into();
        params.serial_number = Some(new_serial());
        let root = params.self_signed(&key).map_err(fail)?;
        Ok(Self {
            root_pem: root.pem(),
            root_der: root.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a root certificate and key from PEM files (e.g. Istio's `ca-cert.pem`/`ca-key.pem`).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, IdentityError> {
        let root_pem = std::fs::read_to_string(cert_path)
            .map_err(|error| IdentityError::io("read", cert_path, error))?;
        let key_pem = std::fs::read_to_string(key_path)
            .map_err(|error| IdentityError::io("read", key_path, error))?;
        Self::from_pem(&root_pem, &key_pem, &cert_path.display().to_string())
    }

    /// Builds from PEM text; `origin` names it in errors.
    pub fn from_pem(root_pem: &str, key_pem: &str, origin: &str) -> Result<Self, IdentityError> {
        let key = KeyPair::from_pem(key_pem).map_err(|error| IdentityError::Key {
            origin: origin.to_owned(),
            detail: error.to_string(),
        })?;
        let root_der = super::certificate::parse_certificates(
            root_pem.as_bytes(),
            "root certificate",
            origin,
        )?
        .remove(0);
        let issuer =
            Issuer::from_ca_cert_der(&root_der, key).map_err(|error| IdentityError::Issue {
                what: format!("CA from {origin}"),
                detail: error.to_string(),
            })?;
        Ok(Self {
            root_pem: root_pem.to_owned(),
            root_der,
            issuer,
        })
    }

    /// Writes `root-cert.pem` and `root-key.pem` (0600) into `directory`, refusing to overwrite.
    pub fn write(&self, directory: &Path) -> Result<(PathBuf, PathBuf), IdentityError> {
        use std::{io::Write, os::unix::fs::OpenOptionsExt};
        std::fs::create_dir_all(directory)
            .map_err(|error| IdentityError::io("create directory", directory, error))?;
        let cert_path = directory.join(ROOT_CERT_FILE);
        let key_path = directory.join(ROOT_KEY_FILE);
        for (path, text, mode) in [
            (&cert_path, self.root_pem.clone(), 0o644),
            (&key_path, self.issuer.key().serialize_pem(), 0o600),
        ] {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(path)
                .map_err(|error| IdentityError::io("create", path, error))?;
            file.write_all(text.as_bytes())
                .map_err(|error| IdentityError::io("write", path, error))?;
        }
        Ok((cert_path, key_path))
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The root certificate, DER.
    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    /// Issues a certificate for `identity` valid from now (less clock skew) for `lifetime`.
    pub fn issue(
        &self,
        identity: &SpiffeId,
        lifetime: Duration,
    ) -> Result<WorkloadCertificate, IdentityError> {
        let now = SystemTime::now();
        self.issue_between(identity, now - CLOCK_SKEW, now + lifetime)
    }

    /// Issues a certificate for `identity` with an explicit validity window.
    pub fn issue_between(
        &self,
        identity: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<WorkloadCertificate, IdentityError> {
        let pem = self.issue_pem_between(identity, not_before, not_after)?;
        WorkloadCertificate::from_pem(
            pem.chain.as_bytes(),
            pem.key.as_bytes(),
            &format!("built-in CA for {identity}"),
        )
    }

    /// Issues a certificate for `identity` and returns it as PEM text.
    pub fn issue_pem_between(
        &self,
        identity: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedPem, IdentityError> {
        let fail = |error: rcgen::Error| IdentityError::Issue {
            what: identity.to_string(),
            detail: error.to_string(),
        };
        let key = KeyPair::generate().map_err(fail)?;
        let mut params = CertificateParams::default();
        // Istio's workload certificates have an empty subject and the identity only in the SAN.
        params.distinguished_name = DistinguishedName::new();
        let uri = Ia5String::try_from(identity.to_string()).map_err(fail)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(new_serial());
        let certificate = params.signed_by(&key, &self.issuer).map_err(fail)?;
        Ok(IssuedPem {
            chain: certificate.pem(),
            key: key.serialize_pem(),
        })
    }

    /// The root key as a rustls private key (for tests that need to sign with it).
    pub fn root_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.issuer.key().serialize_der()))
    }
}

/// Issues a certificate for `identity` and writes it where a file-backed
/// [`super::CertificateStore`] reads it: `<directory>/root-cert.pem` and
/// `<directory>/<ns>/<sa>/{cert-chain.pem,key.pem}` (key 0600). Returns the chain's path.
pub fn issue_to_directory(
    authority: &CertificateAuthority,
    identity: &SpiffeId,
    directory: &Path,
    lifetime: Duration,
) -> Result<PathBuf, IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    let now = SystemTime::now();
    let pem = authority.issue_pem_between(identity, now - CLOCK_SKEW, now + lifetime)?;
    let (chain_path, key_path) = super::store::workload_paths(directory, identity);
    if let Some(parent) = chain_path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|error| IdentityError::io("create directory", parent, error))?;
    }
    let bundle_path = directory.join(super::store::TRUST_BUNDLE_FILE);
    // Write the key first with tight permissions, then the chain: a reader never pairs a new
    // chain with an old key for long.
    for (path, text) in [
        (&key_path, &pem.key),
        (&chain_path, &pem.chain),
        (&bundle_path, &authority.root_pem),
    ] {
        std::fs::write(path, text).map_err(|error| IdentityError::io("write", path, error))?;
    }
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
        .map_err(|error| IdentityError::io("chmod", &key_path, error))?;
    Ok(chain_path)
}

/// A serial number unique within this process and unlikely to repeat across processes.
fn new_serial() -> SerialNumber {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&nanos.to_be_bytes());
    bytes[8..].copy_from_slice(&(count ^ u64::from(std::process::id()) << 32).to_be_bytes());
    // A positive DER integer: clear the top bit.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_certificates_carrying_the_spiffe_id() {
        let authority = CertificateAuthority::generate("cluster.local").unwrap();
        let identity = SpiffeId::new("cluster.local", "default", "sleep");
        let certificate = authority
            .issue(&identity, Duration::from_secs(3600))
            .unwrap();
        assert_eq!(certificate.identity, identity);
        assert!(!certificate.needs_rotation(SystemTime::now()));
        assert!(certificate.needs_rotation(SystemTime::now() + Duration::from_secs(1900)));
    }

    #[test]
    fn reloads_a_root_from_pem() {
        let authority = CertificateAuthority::generate("cluster.local").unwrap();
        let key_pem = authority.issuer.key().serialize_pem();
        let again = CertificateAuthority::from_pem(authority.root_pem(), &key_pem, "test").unwrap();
        let identity = SpiffeId::new("cluster.local", "a", "b");
        again.issue(&identity, Duration::from_secs(60)).unwrap();
    }
}
