//! Building the certificate store the daemon was asked for.

use std::{sync::Arc, time::Duration};

use super::IdentityArgs;
use crate::identity::{
    CertificateStore, IdentityError, SpiffeId,
    ca::CertificateAuthority,
    ca_client::{CaClient, CaClientConfig},
    ca_dir,
};

/// How ztunnel authenticates to Istio's CA: the projected service-account token and the
/// cluster id (the same ones it sends to istiod for xDS).
#[derive(Debug, Clone)]
pub struct CaAuthentication {
    /// The token file; without it no token is sent.
    pub token_file: Option<std::path::PathBuf>,
    /// Sent in `clusterid`.
    pub cluster_id: String,
}

impl Default for CaAuthentication {
    fn default() -> Self {
        Self {
            token_file: None,
            cluster_id: "Kubernetes".to_owned(),
        }
    }
}

/// The store `args` describe: Istio's CA from `--ca-address`, the built-in CA from
/// `--ca-dir`, files from `--cert-dir`, or, with none, a CA generated in memory for this
/// process only (logged: peers on other nodes will not trust it). With Istio's CA, start
/// [`crate::identity::ca_renewal::spawn`] too.
pub fn store(
    args: &IdentityArgs,
    authentication: &CaAuthentication,
) -> Result<Arc<CertificateStore>, IdentityError> {
    let lifetime = Duration::from_secs(args.cert_lifetime_hours.max(1) * 3600);
    let store = if let Some(address) = &args.istio_ca.ca_address {
        let root_path = &args.istio_ca.ca_root_cert;
        let bundle = std::fs::read(root_path)
            .map_err(|error| IdentityError::io("read", root_path, error))?;
        let origin = root_path.display().to_string();
        let store = CertificateStore::with_istio_ca(
            Arc::new(CaClient::new(
                CaClientConfig {
                    address: address.clone(),
                    token_file: authentication.token_file.clone(),
                    cluster_id: authentication.cluster_id.clone(),
                    lifetime,
                },
                crate::identity::store::root_store(&bundle, &origin)?,
            )?),
            &args.trust_domain,
            &bundle,
            &origin,
        )?;
        tracing::info!(ca = %address, root = %origin, "workload certificates from Istio's CA");
        store
    } else if let Some(directory) = &args.cert_dir {
        CertificateStore::from_files(directory, &args.trust_domain)?
    } else {
        let authority = match &args.ca_dir {
            Some(directory) => ca_dir::load(directory)?,
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

/// Asks for the certificates of `identities` and waits until all are in force (Istio's CA may
/// be slow or down: each wait is logged, and the wait goes on until they arrive).
pub async fn first_certificates(store: &CertificateStore, identities: &[SpiffeId]) {
    for identity in identities {
        store.prefetch(identity);
    }
    loop {
        let missing = store.wait_for(identities, Duration::from_secs(10)).await;
        if missing.is_empty() {
            tracing::info!(
                identities = identities.len(),
                "certificates of the enrolled pods are in force"
            );
            return;
        }
        let missing: Vec<String> = missing.iter().map(ToString::to_string).collect();
        tracing::warn!(
            ?missing,
            "still waiting for the first certificates from Istio's CA"
        );
    }
}

/// The identities of the pods enrolled on this node (from the run dir), as the proxy will
/// serve them: the workload the state lists at the pod's address, else the namespace's
/// default service account.
pub fn enrolled_identities(
    run_dir: &std::path::Path,
    state: &crate::state::StateHandle,
    trust_domain: &str,
) -> Vec<SpiffeId> {
    let enrolled = match crate::inpod::state::read_enrolled(run_dir) {
        Ok(enrolled) => enrolled,
        Err(error) => {
            tracing::warn!(run_dir = %run_dir.display(), %error, "cannot read the enrolled pods; no certificate prefetched");
            return Vec::new();
        }
    };
    let snapshot = state.snapshot();
    let mut identities: Vec<SpiffeId> = enrolled
        .pods
        .iter()
        .map(|pod| {
            pod.ips
                .iter()
                .find_map(|ip| snapshot.workload_by_ip(*ip))
                .map_or_else(
                    || {
                        SpiffeId::new(
                            trust_domain,
                            &pod.namespace,
                            crate::state::workload::DEFAULT_SERVICE_ACCOUNT,
                        )
                    },
                    |workload| workload.identity(),
                )
        })
        .collect();
    identities.sort();
    identities.dedup();
    identities
}
