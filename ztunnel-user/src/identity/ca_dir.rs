//! The CA directories `--ca-dir` accepts:
//!
//! - ours (`ztunnel ca init`): `root-cert.pem` and `root-key.pem`; the root signs.
//! - Istio's plug-in CA `cacerts`: `ca-cert.pem` and `ca-key.pem` (an intermediate CA and its
//!   key), `cert-chain.pem` (that CA and the certificates up to the root) and `root-cert.pem`
//!   (the mesh root, the trust bundle); the intermediate signs and issued chains carry the
//!   chain, so peers that trust only the root verify them.
//!
//! A directory holding `ca-key.pem` is read as the plug-in layout.

use std::path::{Path, PathBuf};

use super::{
    CertificateAuthority, IdentityError,
    ca::{ROOT_CERT_FILE, ROOT_KEY_FILE},
};

/// The plug-in layout's signing certificate.
pub const PLUGIN_CERT_FILE: &str = "ca-cert.pem";
/// The plug-in layout's signing key.
pub const PLUGIN_KEY_FILE: &str = "ca-key.pem";
/// The plug-in layout's chain from the signing certificate up to the root.
pub const PLUGIN_CHAIN_FILE: &str = "cert-chain.pem";

/// Loads the CA in `directory`, in whichever layout it is.
pub fn load(directory: &Path) -> Result<CertificateAuthority, IdentityError> {
    let plugin_key = directory.join(PLUGIN_KEY_FILE);
    if !plugin_key.exists() {
        return CertificateAuthority::load(
            &directory.join(ROOT_CERT_FILE),
            &directory.join(ROOT_KEY_FILE),
        );
    }
    let read = |name: &str| {
        let path = directory.join(name);
        std::fs::read_to_string(&path).map_err(|error| IdentityError::io("read", path, error))
    };
    let authority = CertificateAuthority::from_plugin_pem(
        &read(PLUGIN_CERT_FILE)?,
        &read(PLUGIN_KEY_FILE)?,
        &read(PLUGIN_CHAIN_FILE)?,
        &read(ROOT_CERT_FILE)?,
        &format!("plug-in CA directory {}", directory.display()),
    )?;
    tracing::info!(
        directory = %directory.display(),
        intermediates = authority.intermediates_pem().len(),
        "loaded Istio plug-in CA: issued chains carry its intermediates"
    );
    Ok(authority)
}

/// Writes `authority` into `directory` in the plug-in layout (key 0600), refusing to overwrite.
/// Returns the directory's files.
pub fn write_plugin(
    authority: &CertificateAuthority,
    directory: &Path,
) -> Result<Vec<PathBuf>, IdentityError> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    std::fs::create_dir_all(directory)
        .map_err(|error| IdentityError::io("create directory", directory, error))?;
    let files = [
        (
            PLUGIN_CERT_FILE,
            authority.signing_cert_pem().to_owned(),
            0o644,
        ),
        (PLUGIN_KEY_FILE, authority.signing_key_pem(), 0o600),
        (
            PLUGIN_CHAIN_FILE,
            authority.intermediates_pem().concat(),
            0o644,
        ),
        (ROOT_CERT_FILE, authority.root_pem().to_owned(), 0o644),
    ];
    let mut written = Vec::new();
    for (name, text, mode) in files {
        let path = directory.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(|error| IdentityError::io("create", &path, error))?;
        file.write_all(text.as_bytes())
            .map_err(|error| IdentityError::io("write", &path, error))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::identity::{SpiffeId, certificate::parse_certificates};

    #[test]
    fn plugin_directory_issues_chains_with_its_intermediates() {
        let directory = tempfile::tempdir().unwrap();
        let root = CertificateAuthority::generate("cluster.local").unwrap();
        let intermediate = root.intermediate("cluster-a").unwrap();
        write_plugin(&intermediate, directory.path()).unwrap();

        let loaded = load(directory.path()).unwrap();
        let identity = SpiffeId::new("cluster.local", "default", "sleep");
        let certificate = loaded.issue(&identity, Duration::from_secs(3600)).unwrap();
        let chain = certificate.chain();
        let intermediate_der = parse_certificates(
            intermediate.signing_cert_pem().as_bytes(),
            "intermediate",
            "test",
        )
        .unwrap();
        println!(
            "issued chain of {} certificates; loaded CA has {} intermediates",
            chain.len(),
            loaded.intermediates_pem().len()
        );
        assert_eq!(chain.len(), 2, "leaf + intermediate, no root");
        assert_eq!(chain[1], intermediate_der[0]);
        assert_eq!(loaded.root_der(), root.root_der());
    }

    #[test]
    fn root_directory_issues_leaf_only_chains() {
        let directory = tempfile::tempdir().unwrap();
        let root = CertificateAuthority::generate("cluster.local").unwrap();
        root.write(directory.path()).unwrap();
        let loaded = load(directory.path()).unwrap();
        let identity = SpiffeId::new("cluster.local", "default", "sleep");
        let certificate = loaded.issue(&identity, Duration::from_secs(3600)).unwrap();
        assert_eq!(certificate.chain().len(), 1);
    }

    #[test]
    fn a_copy_of_the_root_in_the_chain_file_is_not_sent() {
        let root = CertificateAuthority::generate("cluster.local").unwrap();
        let intermediate = root.intermediate("cluster-a").unwrap();
        // Istio's sample cacerts list the root at the end of cert-chain.pem.
        let chain_with_root = format!(
            "{}{}",
            intermediate.intermediates_pem().concat(),
            root.root_pem()
        );
        let loaded = CertificateAuthority::from_plugin_pem(
            intermediate.signing_cert_pem(),
            &intermediate.signing_key_pem(),
            &chain_with_root,
            root.root_pem(),
            "test",
        )
        .unwrap();
        assert_eq!(loaded.intermediates_pem().len(), 1);
    }
}
