//! The certificates in force: one per service account with pods on the node, from files on disk
//! (reloaded when they change) or issued by the built-in CA (rotated past half their lifetime).
//!
//! Replacing a certificate never touches live connections: TLS sessions keep the key they were
//! made with, and only new handshakes (and new pooled connections) use the new one.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use rustls::RootCertStore;

use super::{CertificateAuthority, IdentityError, SpiffeId, WorkloadCertificate, certificate};

/// File name of the trust bundle in a certificate directory.
pub const TRUST_BUNDLE_FILE: &str = "root-cert.pem";
/// File name of a workload chain, under `<directory>/<namespace>/<service-account>/`.
pub const CHAIN_FILE: &str = "cert-chain.pem";
/// File name of a workload key, beside [`CHAIN_FILE`].
pub const KEY_FILE: &str = "key.pem";

/// Where certificates come from.
#[derive(Debug)]
pub enum CertificateSource {
    /// `<directory>/root-cert.pem` and `<directory>/<ns>/<sa>/{cert-chain.pem,key.pem}`.
    Files {
        /// The directory.
        directory: PathBuf,
    },
    /// The built-in CA issues certificates of the given lifetime.
    Authority {
        /// The CA.
        authority: Arc<CertificateAuthority>,
        /// How long each workload certificate lives.
        lifetime: Duration,
    },
    /// Istio's CA signs them: identities asked for are fetched, renewed and retried by
    /// [`super::ca_renewal`]; until the first certificate of an identity arrives it has none.
    IstioCa {
        /// The CA's client.
        client: Arc<super::ca_client::CaClient>,
    },
}

/// What [`CertificateStore::refresh`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RefreshReport {
    /// Identities whose certificate was replaced.
    pub replaced: Vec<SpiffeId>,
    /// Whether the trust bundle changed.
    pub trust_bundle_changed: bool,
}

#[derive(Debug)]
struct Loaded {
    certificate: Arc<WorkloadCertificate>,
    /// For files: the bytes it was parsed from, to notice changes.
    source_text: Option<(Vec<u8>, Vec<u8>)>,
}

/// The certificate store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct CertificateStore {
    source: CertificateSource,
    trust_domain: String,
    roots: RwLock<(Arc<RootCertStore>, Vec<u8>)>,
    certificates: RwLock<HashMap<SpiffeId, Loaded>>,
    /// Istio's CA: identities asked for that have no certificate yet.
    wanted: std::sync::Mutex<std::collections::BTreeSet<SpiffeId>>,
    /// Istio's CA: wakes the renewal task when an identity is first asked for.
    pub(crate) wake: tokio::sync::Notify,
    /// Counts certificates installed from Istio's CA, to wait on.
    installed: tokio::sync::watch::Sender<u64>,
    /// How many holders (pod contexts, a waypoint) need each identity's certificate: with
    /// Istio's CA, one nobody needs is dropped instead of renewed.
    leases: std::sync::Mutex<HashMap<SpiffeId, usize>>,
}

/// A need for an identity's certificate, from [`CertificateStore::lease`]; released on drop.
#[derive(Debug)]
pub struct CertificateLease {
    store: Arc<CertificateStore>,
    identity: SpiffeId,
}

impl Drop for CertificateLease {
    fn drop(&mut self) {
        let mut leases = self.store.lock_leases();
        if let Some(count) = leases.get_mut(&self.identity) {
            *count -= 1;
            if *count == 0 {
                leases.remove(&self.identity);
            }
        }
    }
}

impl CertificateStore {
    /// A store reading `directory` (see [`CertificateSource::Files`]).
    pub fn from_files(directory: &Path, trust_domain: &str) -> Result<Self, IdentityError> {
        let bundle_path = directory.join(TRUST_BUNDLE_FILE);
        let bundle = read(&bundle_path)?;
        let roots = root_store(&bundle, &bundle_path.display().to_string())?;
        Ok(Self {
            source: CertificateSource::Files {
                directory: directory.to_owned(),
            },
            trust_domain: trust_domain.to_owned(),
            roots: RwLock::new((roots, bundle)),
            certificates: RwLock::default(),
            wanted: std::sync::Mutex::default(),
            wake: tokio::sync::Notify::new(),
            installed: tokio::sync::watch::Sender::new(0),
            leases: std::sync::Mutex::default(),
        })
    }

    /// A store whose certificates the built-in CA issues, each living `lifetime`.
    pub fn with_authority(
        authority: Arc<CertificateAuthority>,
        trust_domain: &str,
        lifetime: Duration,
    ) -> Result<Self, IdentityError> {
        let bundle = authority.root_pem().as_bytes().to_vec();
        let roots = root_store(&bundle, "built-in CA")?;
        Ok(Self {
            source: CertificateSource::Authority {
                authority,
                lifetime,
            },
            trust_domain: trust_domain.to_owned(),
            roots: RwLock::new((roots, bundle)),
            certificates: RwLock::default(),
            wanted: std::sync::Mutex::default(),
            wake: tokio::sync::Notify::new(),
            installed: tokio::sync::watch::Sender::new(0),
            leases: std::sync::Mutex::default(),
        })
    }

    /// A store whose certificates Istio's CA signs (see [`CertificateSource::IstioCa`]); peers
    /// must chain to `bundle` (PEM, the mesh root), read from `origin`.
    pub fn with_istio_ca(
        client: Arc<super::ca_client::CaClient>,
        trust_domain: &str,
        bundle: &[u8],
        origin: &str,
    ) -> Result<Self, IdentityError> {
        let roots = root_store(bundle, origin)?;
        Ok(Self {
            source: CertificateSource::IstioCa { client },
            trust_domain: trust_domain.to_owned(),
            roots: RwLock::new((roots, bundle.to_vec())),
            certificates: RwLock::default(),
            wanted: std::sync::Mutex::default(),
            wake: tokio::sync::Notify::new(),
            installed: tokio::sync::watch::Sender::new(0),
            leases: std::sync::Mutex::default(),
        })
    }

    /// Where certificates come from.
    pub fn source(&self) -> &CertificateSource {
        &self.source
    }

    /// With Istio's CA: asks for `identity`'s certificate now if it has none (the renewal task
    /// fetches it); with other sources, loads or issues it. Errors are left to the first use.
    pub fn prefetch(&self, identity: &SpiffeId) {
        if let Err(error) = self.certificate(identity) {
            tracing::debug!(%identity, %error, "certificate not available yet");
        }
    }

    /// Like [`certificate`](Self::certificate); with Istio's CA, an identity without a
    /// certificate yet is waited for, up to `timeout` (its first request is under way).
    pub async fn certificate_or_wait(
        &self,
        identity: &SpiffeId,
        timeout: Duration,
    ) -> Result<Arc<WorkloadCertificate>, IdentityError> {
        match self.certificate(identity) {
            Err(IdentityError::NoCertificate { .. })
                if matches!(self.source, CertificateSource::IstioCa { .. }) =>
            {
                self.wait_for(std::slice::from_ref(identity), timeout).await;
                self.certificate(identity)
            }
            other => other,
        }
    }

    /// Waits until every identity in `identities` has a certificate, or `timeout` passes;
    /// returns those still without one.
    pub async fn wait_for(&self, identities: &[SpiffeId], timeout: Duration) -> Vec<SpiffeId> {
        let mut installed = self.installed.subscribe();
        let missing = || {
            let certificates = self.read_certificates();
            identities
                .iter()
                .filter(|identity| !certificates.contains_key(*identity))
                .cloned()
                .collect::<Vec<_>>()
        };
        let wait = async {
            loop {
                if missing().is_empty() {
                    return;
                }
                if installed.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        missing()
    }

    /// Records that `identity`'s certificate is needed until the lease is dropped (and asks for
    /// it now, see [`prefetch`](Self::prefetch)).
    pub fn lease(self: &Arc<Self>, identity: &SpiffeId) -> CertificateLease {
        *self.lock_leases().entry(identity.clone()).or_default() += 1;
        self.prefetch(identity);
        CertificateLease {
            store: self.clone(),
            identity: identity.clone(),
        }
    }

    /// Whether anything holds a lease on `identity`.
    pub fn is_leased(&self, identity: &SpiffeId) -> bool {
        self.lock_leases().contains_key(identity)
    }

    /// Drops `identity`'s certificate (nobody needs it any more); it is fetched again on use.
    pub(crate) fn forget(&self, identity: &SpiffeId) {
        if self.write_certificates().remove(identity).is_some() {
            tracing::info!(%identity, "workload certificate no longer needed by any pod; not renewed");
        }
    }

    fn lock_leases(&self) -> std::sync::MutexGuard<'_, HashMap<SpiffeId, usize>> {
        self.leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `identity` has a certificate in force.
    pub fn has_certificate(&self, identity: &SpiffeId) -> bool {
        self.read_certificates().contains_key(identity)
    }

    /// With Istio's CA: identities asked for that have no certificate yet.
    pub(crate) fn wanted(&self) -> Vec<SpiffeId> {
        self.wanted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Puts a certificate from Istio's CA in force for its identity.
    pub(crate) fn install(&self, certificate: WorkloadCertificate) -> Arc<WorkloadCertificate> {
        let identity = certificate.identity.clone();
        let certificate = Arc::new(certificate);
        tracing::info!(
            %identity,
            serial = %certificate.serial,
            not_after = ?certificate.not_after,
            chain_length = certificate.chain().len(),
            "workload certificate from Istio's CA in force"
        );
        self.write_certificates().insert(
            identity.clone(),
            Loaded {
                certificate: certificate.clone(),
                source_text: None,
            },
        );
        self.wanted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&identity);
        self.installed.send_modify(|count| *count += 1);
        certificate
    }

    /// Our trust domain: peers presenting another one are refused.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The trust anchors peers' chains must lead to.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0
            .clone()
    }

    /// The certificate in force for `identity`, loading or issuing it on first use.
    pub fn certificate(
        &self,
        identity: &SpiffeId,
    ) -> Result<Arc<WorkloadCertificate>, IdentityError> {
        if let Some(loaded) = self.read_certificates().get(identity) {
            return Ok(loaded.certificate.clone());
        }
        let loaded = self.load(identity)?;
        // Concurrent first users may each have loaded one: all of them get the one stored, so
        // everybody agrees on the certificate in force (the HBONE pool keys on its serial).
        let mut certificates = self.write_certificates();
        let stored = certificates.entry(identity.clone()).or_insert(loaded);
        Ok(stored.certificate.clone())
    }

    /// Every certificate in force, for `/config_dump`.
    pub fn certificates(&self) -> Vec<Arc<WorkloadCertificate>> {
        self.read_certificates()
            .values()
            .map(|loaded| loaded.certificate.clone())
            .collect()
    }

    /// Reloads changed files, or re-issues certificates past half their lifetime.
    pub fn refresh(&self) -> Result<RefreshReport, IdentityError> {
        let mut report = RefreshReport::default();
        if let CertificateSource::Files { directory } = &self.source {
            let bundle_path = directory.join(TRUST_BUNDLE_FILE);
            let bundle = read(&bundle_path)?;
            let mut roots = self
                .roots
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if roots.1 != bundle {
                *roots = (
                    root_store(&bundle, &bundle_path.display().to_string())?,
                    bundle,
                );
                report.trust_bundle_changed = true;
            }
        }
        let identities: Vec<SpiffeId> = self.read_certificates().keys().cloned().collect();
        let now = SystemTime::now();
        for identity in identities {
            let stale = match (&self.source, self.read_certificates().get(&identity)) {
                (_, None) => false,
                // The renewal task keeps these fresh (and retries while the CA is down).
                (CertificateSource::IstioCa { .. }, Some(_)) => false,
                (CertificateSource::Authority { .. }, Some(loaded)) => {
                    loaded.certificate.needs_rotation(now)
                }
                (CertificateSource::Files { directory }, Some(loaded)) => {
                    let (chain_path, key_path) = workload_paths(directory, &identity);
                    Some((read(&chain_path)?, read(&key_path)?)) != loaded.source_text
                }
            };
            if stale {
                self.rotate(&identity)?;
                report.replaced.push(identity);
            }
        }
        Ok(report)
    }

    /// Replaces the certificate of `identity` now (re-issued, or re-read from its files).
    pub fn rotate(&self, identity: &SpiffeId) -> Result<Arc<WorkloadCertificate>, IdentityError> {
        let loaded = self.load(identity)?;
        let certificate = loaded.certificate.clone();
        tracing::info!(
            %identity,
            serial = %certificate.serial,
            not_after = ?certificate.not_after,
            "workload certificate replaced"
        );
        self.write_certificates().insert(identity.clone(), loaded);
        Ok(certificate)
    }

    /// Runs [`refresh`](Self::refresh) every `period` until the task is dropped.
    pub fn spawn_refresh(self: Arc<Self>, period: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            loop {
                ticker.tick().await;
                if let Err(error) = self.refresh() {
                    tracing::warn!(%error, "certificate refresh failed; the certificates in force stay");
                }
            }
        })
    }

    fn load(&self, identity: &SpiffeId) -> Result<Loaded, IdentityError> {
        match &self.source {
            CertificateSource::IstioCa { client } => {
                let first = self
                    .wanted
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .insert(identity.clone());
                if first {
                    self.wake.notify_one();
                }
                Err(IdentityError::NoCertificate {
                    identity: identity.clone(),
                    detail: format!(
                        "asked Istio's CA at {}; no certificate issued yet",
                        client.address()
                    ),
                })
            }
            CertificateSource::Authority {
                authority,
                lifetime,
            } => Ok(Loaded {
                certificate: Arc::new(authority.issue(identity, *lifetime)?),
                source_text: None,
            }),
            CertificateSource::Files { directory } => {
                let (chain_path, key_path) = workload_paths(directory, identity);
                let chain = read(&chain_path)?;
                let key = read(&key_path)?;
                let certificate =
                    WorkloadCertificate::from_pem(&chain, &key, &chain_path.display().to_string())?;
                if &certificate.identity != identity {
                    return Err(IdentityError::NoCertificate {
                        identity: identity.clone(),
                        detail: format!(
                            "{} holds a certificate for {}",
                            chain_path.display(),
                            certificate.identity
                        ),
                    });
                }
                Ok(Loaded {
                    certificate: Arc::new(certificate),
                    source_text: Some((chain, key)),
                })
            }
        }
    }

    fn read_certificates(&self) -> std::sync::RwLockReadGuard<'_, HashMap<SpiffeId, Loaded>> {
        self.certificates
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_certificates(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<SpiffeId, Loaded>> {
        self.certificates
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Where a workload's chain and key live under a certificate directory.
pub fn workload_paths(directory: &Path, identity: &SpiffeId) -> (PathBuf, PathBuf) {
    let base = directory
        .join(&identity.namespace)
        .join(&identity.service_account);
    (base.join(CHAIN_FILE), base.join(KEY_FILE))
}

fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|error| IdentityError::io("read", path, error))
}

/// The trust anchors in a PEM bundle; `origin` names it in errors.
pub fn root_store(bundle: &[u8], origin: &str) -> Result<Arc<RootCertStore>, IdentityError> {
    let mut roots = RootCertStore::empty();
    for root in certificate::parse_certificates(bundle, "trust bundle", origin)? {
        roots.add(root).map_err(|error| IdentityError::Pem {
            what: "trust bundle",
            origin: origin.to_owned(),
            detail: error.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_first_users_get_the_same_certificate() {
        let authority = Arc::new(CertificateAuthority::generate("cluster.local").unwrap());
        let store = Arc::new(
            CertificateStore::with_authority(authority, "cluster.local", Duration::from_secs(3600))
                .unwrap(),
        );
        let identity = SpiffeId::new("cluster.local", "default", "sleep");
        let serials: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| store.certificate(&identity).unwrap().serial.clone()))
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().unwrap())
                .collect()
        });
        assert!(
            serials.iter().all(|serial| *serial == serials[0]),
            "{serials:?}"
        );
    }

    #[test]
    fn reloads_changed_files_and_keeps_unchanged_ones() {
        let directory =
            std::env::temp_dir().join(format!("ztunnel-store-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        let authority = CertificateAuthority::generate("cluster.local").unwrap();
        let identity = SpiffeId::new("cluster.local", "default", "sleep");
        let (chain_path, key_path) = workload_paths(&directory, &identity);
        std::fs::create_dir_all(chain_path.parent().unwrap()).unwrap();
        std::fs::write(directory.join(TRUST_BUNDLE_FILE), authority.root_pem()).unwrap();
        let write = |pem: super::super::ca::IssuedPem| {
            std::fs::write(&chain_path, pem.chain).unwrap();
            std::fs::write(&key_path, pem.key).unwrap();
        };
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        write(
            authority
                .issue_pem_between(&identity, now, now + hour)
                .unwrap(),
        );
        let store = CertificateStore::from_files(&directory, "cluster.local").unwrap();
        let first = store.certificate(&identity).unwrap();
        assert_eq!(store.refresh().unwrap(), RefreshReport::default());
        write(
            authority
                .issue_pem_between(&identity, now, now + hour)
                .unwrap(),
        );
        let report = store.refresh().unwrap();
        let second = store.certificate(&identity).unwrap();
        assert_eq!(report.replaced, vec![identity.clone()]);
        assert_ne!(first.serial, second.serial);
        std::fs::write(&chain_path, "not a certificate").unwrap();
        let error = store.refresh().unwrap_err();
        assert!(error.to_string().contains("cert-chain.pem"), "{error}");
        assert_eq!(
            store.certificate(&identity).unwrap().serial,
            second.serial,
            "last good certificate stays"
        );
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
