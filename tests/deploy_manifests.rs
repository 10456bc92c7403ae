//! The Kubernetes manifests in `deploy/` are valid for the current Kubernetes API, strictly
//! (no unknown fields), checked offline with `kubernetes-validate`.

use std::{path::PathBuf, process::Command};

#[test]
fn deploy_manifests_pass_strict_validation() {
    let python = std::env::var_os("ZTUNNEL_PYTHON").map(PathBuf::from).expect(
        "ZTUNNEL_PYTHON is not set: run the suite with `cargo xtask test`, which installs kubernetes-validate",
    );
    let validator = python.with_file_name("kubernetes-validate");
    assert!(
        validator.exists(),
        "{} is missing: run `cargo xtask setup`",
        validator.display()
    );
    let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(&deploy)
        .expect("deploy/ exists")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "yaml")
        })
        .collect();
    manifests.sort();
    println!("validating {} manifests: {manifests:?}", manifests.len());
    assert!(
        manifests.len() >= 4,
        "deploy/ should hold the DaemonSet, ServiceAccount, ConfigMap and namespace"
    );
    let output = Command::new(&validator)
        .arg("--strict")
        .args(&manifests)
        .output()
        .expect("run kubernetes-validate");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{report}");
    assert!(
        output.status.success(),
        "kubernetes-validate --strict failed:\n{report}"
    );
    assert_eq!(
        report.matches(" passed ").count(),
        manifests.len(),
        "every manifest reports `passed`"
    );
}

/// The command lines the DaemonSet runs are ones this build of ztunnel accepts.
#[test]
fn daemonset_command_lines_parse() {
    let binary = ztunnel_e2e::ztunnel::binary().expect("the ztunnel binary");
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml"),
    )
    .expect("deploy/daemonset.yaml");
    let mut checked = 0;
    let lines: Vec<&str> = text.lines().collect();
    for (index, line) in lines.iter().enumerate() {
        let Some(command) = line.trim().strip_prefix("command: [\"ztunnel\", ") else {
            continue;
        };
        let subcommand: Vec<String> = command
            .trim_end_matches(']')
            .split(", ")
            .map(|word| word.trim_matches('"').to_owned())
            .collect();
        let args: Vec<String> = lines[index + 1..]
            .iter()
            .skip_while(|line| line.trim() == "args:")
            .take_while(|line| line.trim().starts_with("- --") || line.trim().starts_with('#'))
            .filter(|line| line.trim().starts_with("- --"))
            .map(|line| line.trim().trim_start_matches("- ").to_owned())
            .collect();
        let output = Command::new(&binary)
            .args(&subcommand)
            .args(&args)
            .arg("--help")
            .output()
            .expect("run ztunnel");
        println!("ztunnel {subcommand:?} {args:?} --help: {}", output.status);
        assert!(
            output.status.success(),
            "the DaemonSet runs `ztunnel {subcommand:?} {args:?}`, which this build rejects: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        checked += 1;
    }
    assert_eq!(
        checked, 2,
        "the install-cni init container and the ztunnel container"
    );
}
