//! The built-in certificate authority: a root (new, or an existing mesh root such as Istio's),
//! or an intermediate CA under it (Istio's plug-in `cacerts`), that issues short-lived workload
//! certificates for single-machine use. Issued chains are the leaf followed by every
//! intermediate, so a peer that trusts only the root can verify them.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
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

/// A signing certificate and its key, the intermediates between it and the root, and the root.
pub struct CertificateAuthority {
    /// The trust bundle: the root (or roots) issued chains lead to.
    root_pem: String,
    root_der: CertificateDer<'static>,
    /// The signing certificate and any certificates between it and the root, signing certificate
    /// first, each a PEM block; empty when the root itself signs.
    intermediates_pem: Vec<String>,
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
    /// Leaf certificate followed by the intermediates (not the root: that is the trust bundle).
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
        let params = ca_params(trust_domain, "ztunnel root CA")?;
        let root = params.self_signed(&key).map_err(fail)?;
        Ok(Self {
            root_pem: root.pem(),
            root_der: root.der().clone(),
            intermediates_pem: Vec::new(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Makes a new intermediate CA signed by this one (named `name` in its subject): it issues
    /// under the same root, and its chains carry it and this CA's intermediates.
    pub fn intermediate(&self, name: &str) -> Result<Self, IdentityError> {
        let fail = |error: rcgen::Error| IdentityError::Issue {
            what: format!("intermediate CA {name}"),
            detail: error.to_string(),
        };
        let key = KeyPair::generate().map_err(fail)?;
        let params = ca_params(name, &format!("{name} intermediate CA"))?;
        let certificate = params.signed_by(&key, &self.issuer).map_err(fail)?;
        let mut intermediates_pem = vec![certificate.pem()];
        intermediates_pem.extend(self.intermediates_pem.iter().cloned());
        Ok(Self {
            root_pem: self.root_pem.clone(),
            root_der: self.root_der.clone(),
            intermediates_pem,
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
            intermediates_pem: Vec::new(),
            issuer,
        })
    }

    /// Builds an intermediate CA from Istio's plug-in CA texts: `ca_cert_pem` signs with
    /// `key_pem`, `chain_pem` holds it and the certificates up to the root (a copy of the root
    /// in it is dropped: peers have it), `root_pem` is the trust bundle. `origin` names them in
    /// errors.
    pub fn from_plugin_pem(
        ca_cert_pem: &str,
        key_pem: &str,
        chain_pem: &str,
        root_pem: &str,
        origin: &str,
    ) -> Result<Self, IdentityError> {
        let signing = Self::from_pem(ca_cert_pem, key_pem, origin)?;
        let signing_der = super::certificate::parse_certificates(
            ca_cert_pem.as_bytes(),
            "CA certificate",
            origin,
        )?
        .remove(0);
        let roots = super::certificate::parse_certificates(
            root_pem.as_bytes(),
            "root certificate",
            origin,
        )?;
        let chain = super::certificate::parse_certificates(
            chain_pem.as_bytes(),
            "CA certificate chain",
            origin,
        )?;
        let mut intermediates: Vec<CertificateDer<'static>> = Vec::new();
        if !roots.contains(&signing_der) {
            intermediates.push(signing_der);
        }
        for certificate in chain {
            if !roots.contains(&certificate) && !intermediates.contains(&certificate) {
                intermediates.push(certificate);
            }
        }
        Ok(Self {
            root_pem: root_pem.to_owned(),
            root_der: roots[0].clone(),
            intermediates_pem: intermediates.iter().map(to_pem).collect(),
            issuer: signing.issuer,
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

    /// The signing certificate and the intermediates up to the root, PEM, signing certificate
    /// first; empty when the root signs.
    pub fn intermediates_pem(&self) -> &[String] {
        &self.intermediates_pem
    }

    /// The signing certificate, PEM (the root when the root signs).
    pub fn signing_cert_pem(&self) -> &str {
        self.intermediates_pem
            .first()
            .map_or(self.root_pem.as_str(), String::as_str)
    }

    /// The signing key, PEM (PKCS#8).
    pub fn signing_key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
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
        let params = workload_params(identity, not_before, not_after)?;
        let certificate = params.signed_by(&key, &self.issuer).map_err(fail)?;
        Ok(IssuedPem {
            chain: self.chain_pem(&certificate.pem()),
            key: key.serialize_pem(),
        })
    }

    /// Signs a certificate signing request (PEM) for `identity`, as Istio's CA answers
    /// `CreateCertificate`: the request must name exactly `identity` in its URI SAN; the
    /// certificate gets this CA's usual workload fields, whatever else the request asks for.
    /// Returns the PEM chain as Istio's CA sends it: leaf, intermediates, root.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        lifetime: Duration,
    ) -> Result<Vec<String>, IdentityError> {
        let fail = |error: rcgen::Error| IdentityError::Issue {
            what: identity.to_string(),
            detail: error.to_string(),
        };
        let request = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(fail)?;
        let wanted = SanType::URI(Ia5String::try_from(identity.to_string()).map_err(fail)?);
        if request.params.subject_alt_names != [wanted] {
            return Err(IdentityError::Issue {
                what: identity.to_string(),
                detail: format!(
                    "the request names {:?}, not exactly this identity",
                    request.params.subject_alt_names
                ),
            });
        }
        let now = SystemTime::now();
        let params = workload_params(identity, now - CLOCK_SKEW, now + lifetime)?;
        let leaf = params
            .signed_by(&request.public_key, &self.issuer)
            .map_err(fail)?;
        let mut chain = vec![leaf.pem()];
        chain.extend(self.intermediates_pem.iter().cloned());
        chain.push(self.root_pem.clone());
        Ok(chain)
    }

    /// `leaf_pem` followed by this CA's intermediates: the chain a workload presents.
    pub fn chain_pem(&self, leaf_pem: &str) -> String {
        let mut chain = leaf_pem.to_owned();
        for intermediate in &self.intermediates_pem {
            if !chain.ends_with('\n') {
                chain.push('\n');
            }
            chain.push_str(intermediate);
        }
        chain
    }

    /// The signing key as a rustls private key (for tests that need to sign with it).
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

/// The fields of a workload certificate: Istio's workload certificates have an empty subject
/// and the identity only in the URI SAN.
fn workload_params(
    identity: &SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, IdentityError> {
    let uri = Ia5String::try_from(identity.to_string()).map_err(|error| IdentityError::Issue {
        what: identity.to_string(),
        detail: error.to_string(),
    })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
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
    params.serial_number = Some(new_serial()?);
    Ok(params)
}

/// A positive 126-bit serial number from the system's CSPRNG (RFC 5280 asks for
/// unpredictable serials; the top bits are fixed so the DER integer is positive and minimal).
fn new_serial() -> Result<SerialNumber, IdentityError> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| IdentityError::Issue {
            what: "serial number".to_owned(),
            detail: "the system random number generator failed".to_owned(),
        })?;
    bytes[0] = (bytes[0] & 0x3f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn to_pem(der: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.as_ref()))
}

/// The parameters of a CA certificate (root or intermediate) named `organization` /
/// `common_name`: may sign certificates and CRLs, valid from a little before now for the root's
/// lifetime, with a fresh random serial.
fn ca_params(organization: &str, common_name: &str) -> Result<CertificateParams, IdentityError> {
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::OrganizationName, organization);
    subject.push(DnType::CommonName, common_name);
    params.distinguished_name = subject;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + ROOT_LIFETIME).into();
    params.serial_number = Some(new_serial()?);
    Ok(params)
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
