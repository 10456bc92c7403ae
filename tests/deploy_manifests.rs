//! The Kubernetes manifests in `deploy/` are valid for the current Kubernetes API, strictly
//! (no unknown fields), checked offline with `kubernetes-validate`.

use std::{path::PathBuf, process::Command};

#[test]
fn deploy_manifests_pass_strict_validation() {
    let python = std::env::var_os("ZTUNNEL_PYTHON").map(PathBuf::from).expect(
        "ZTUNNEL_PYTHON is not set: run the suite with `cargo xtask test`, which installs kubernetes-validate",
    );
    let validator = python.with_file_name("kubernetes-validate");
    assert!(validator.exists(), "{} is missing: run `cargo xtask setup`", validator.display());
    let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(&deploy)
        .expect("deploy/ exists")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "yaml"))
        .collect();
    manifests.sort();
    println!("validating {} manifests: {manifests:?}", manifests.len());
    assert!(manifests.len() >= 4, "deploy/ should hold the DaemonSet, ServiceAccount, ConfigMap and namespace");
    let output = Command::new(&validator).arg("--strict").args(&manifests).output().expect("run kubernetes-validate");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{report}");
    assert!(output.status.success(), "kubernetes-validate --strict failed:\n{report}");
    assert_eq!(report.matches(" passed ").count(), manifests.len(), "every manifest reports `passed`");
}
