//! Installation against real primary-CNI configurations (Calico, Flannel, kindnet's ptp, and a
//! single-plugin bridge `.conf`), in temporary conf dirs.

use std::{fs, path::Path};

use serde_json::{Value, json};

use super::*;

const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/cni/testdata");

fn ours() -> Value {
    json!({ "type": PLUGIN_NAME, "runDir": "/var/run/ztunnel", "excludeNamespaces": ["kube-system"] })
}

fn conf_dir_with(file: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::copy(Path::new(TESTDATA).join(file), dir.path().join(file)).expect("copy testdata");
    dir
}

fn plugin_types(config: &Value) -> Vec<String> {
    config["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .map(|plugin| plugin["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn read(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).expect("read")).expect("json")
}

#[test]
fn chains_last_after_real_primary_conflists_and_uninstalls_cleanly() {
    for (file, primary_types) in [
        ("10-calico.conflist", vec!["calico", "portmap", "bandwidth"]),
        ("10-flannel.conflist", vec!["flannel", "portmap"]),
        ("10-kindnet.conflist", vec!["ptp", "portmap"]),
    ] {
        let dir = conf_dir_with(file);
        let original = read(&dir.path().join(file));
        let target = install_config(dir.path(), &ours()).expect("install");
        assert_eq!(target, dir.path().join(file));
        let installed = read(&target);
        let mut expected = primary_types.clone();
        expected.push(PLUGIN_NAME);
        assert_eq!(plugin_types(&installed), expected, "{file}");
        assert_eq!(
            installed["name"], original["name"],
            "{file}: network name kept"
        );
        assert_eq!(
            installed["plugins"][0], original["plugins"][0],
            "{file}: primary untouched"
        );

        // Installing again (an upgrade) keeps exactly one section of ours, still last.
        install_config(dir.path(), &ours()).expect("reinstall");
        assert_eq!(plugin_types(&read(&target)), expected, "{file}: idempotent");

        let changed = uninstall_config(dir.path()).expect("uninstall");
        assert_eq!(changed, vec![target.clone()]);
        assert_eq!(
            read(&target),
            original,
            "{file}: uninstall restores the original"
        );
        assert!(
            uninstall_config(dir.path())
                .expect("uninstall twice")
                .is_empty()
        );
    }
}

#[test]
fn a_single_plugin_conf_becomes_a_conflist() {
    let dir = conf_dir_with("10-bridge.conf");
    let target = install_config(dir.path(), &ours()).expect("install");
    assert_eq!(target, dir.path().join("10-bridge.conflist"));
    assert!(
        !dir.path().join("10-bridge.conf").exists(),
        "the .conf is replaced"
    );
    let installed = read(&target);
    assert_eq!(installed["name"], "bridge");
    assert_eq!(installed["cniVersion"], "0.4.0");
    assert_eq!(plugin_types(&installed), vec!["bridge", PLUGIN_NAME]);
    assert!(
        installed["plugins"][0].get("name").is_none(),
        "name moved to the list"
    );
}

#[test]
fn the_first_file_by_name_is_the_primary() {
    let dir = conf_dir_with("10-flannel.conflist");
    fs::copy(
        Path::new(TESTDATA).join("10-calico.conflist"),
        dir.path().join("20-calico.conflist"),
    )
    .expect("copy");
    fs::write(dir.path().join("00-notes.txt"), "not a config").expect("write");
    assert_eq!(
        primary_config(dir.path()).expect("primary"),
        dir.path().join("10-flannel.conflist")
    );
}

#[test]
fn refuses_empty_dirs_and_broken_files_without_touching_them() {
    let empty = tempfile::tempdir().expect("temp dir");
    assert!(matches!(
        install_config(empty.path(), &ours()),
        Err(InstallError::NoPrimary(_))
    ));

    let broken = tempfile::tempdir().expect("temp dir");
    let path = broken.path().join("10-broken.conflist");
    fs::write(&path, "{ \"plugins\": [").expect("write");
    let error = install_config(broken.path(), &ours()).expect_err("broken json");
    assert!(error.to_string().contains("10-broken.conflist"), "{error}");
    assert_eq!(fs::read_to_string(&path).expect("read"), "{ \"plugins\": [");

    let no_primary = json!({ "cniVersion": "1.0.0", "name": "n", "plugins": [ours()] });
    assert!(
        with_plugin(&no_primary, &ours()).is_err(),
        "our plugin alone is no primary"
    );
}

#[test]
fn installs_and_removes_the_binary() {
    let bin = tempfile::tempdir().expect("temp dir");
    let target = install_binary(bin.path()).expect("install binary");
    assert_eq!(target, bin.path().join(PLUGIN_NAME));
    assert!(fs::metadata(&target).expect("stat").len() > 0);
    uninstall_binary(bin.path()).expect("uninstall");
    assert!(!target.exists());
    uninstall_binary(bin.path()).expect("uninstall twice is fine");
}
