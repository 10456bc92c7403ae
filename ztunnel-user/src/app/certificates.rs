//! Building the certificate store the daemon was asked for.

use std::{sync::Arc, time::Duration};

use super::IdentityArgs;
use crate::identity::{CertificateStore, IdentityError, ca::CertificateAuthority, ca_dir};

/// The store `args` describe: the built-in CA from `--ca-dir`, files from `--cert-dir`, or,
/// with neither, a CA generated in memory for this process only (logged: peers on other
/// nodes will not trust it).
pub fn store(args: &IdentityArgs) -> Result<Arc<CertificateStore>, IdentityError> {
    let lifetime = Duration::from_secs(args.cert_lifetime_hours.max(1) * 3600);
    let store = if let Some(directory) = &args.cert_dir {
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
