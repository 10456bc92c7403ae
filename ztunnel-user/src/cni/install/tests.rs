use std::path::Path;

use super::*;

const PRIMARIES: &[&str] = &[
    "10-flannel.conflist",
    "10-calico.conflist",
    "10-kindnet.conflist",
    "20-harness-ptp.conflist",
];

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/cni/testdata")
        .join(name)
}

/// A CNI configuration directory holding copies of `files` from testdata.
fn conf_dir(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in files {
        fs::copy(testdata(file), dir.path().join(file)).unwrap();
    }
    dir
}

fn entry() -> Value {
    plugin_entry(&PluginSettings {
        enrollment_socket: Some("/var/run/ztunnel/enroll.sock".into()),
        exclude_namespaces: vec!["kube-system".into()],
        workload_config: None,
    })
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_entry_names_the_plugin_and_its_settings() {
    let entry = entry();
    assert_eq!(entry["type"], "ztunnel-cni");
    assert_eq!(entry["enrollmentSocket"], "/var/run/ztunnel/enroll.sock");
    assert!(
        entry.get("workloadConfig").is_none(),
        "unset settings are left out"
    );
}

#[test]
fn install_chains_the_plugin_last_and_keeps_everything_else() {
    for primary in PRIMARIES {
        let dir = conf_dir(&[primary]);
        let original = json(&testdata(primary));
        let installed = install(dir.path(), &entry()).unwrap();
        assert_eq!(
            installed,
            Installed {
                path: dir.path().join(primary),
                changed: true
            }
        );
        let written = json(&installed.path);
        let plugins = written["plugins"].as_array().unwrap();
        let before = original["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), before.len() + 1, "{primary}");
        assert_eq!(
            &plugins[..before.len()],
            before.as_slice(),
            "{primary}: earlier plugins unchanged"
        );
        assert_eq!(plugins.last(), Some(&entry()), "{primary}");
        assert_eq!(written["cniVersion"], original["cniVersion"], "{primary}");
        assert_eq!(written["name"], original["name"], "{primary}");
    }
}

#[test]
fn install_twice_changes_nothing() {
    let dir = conf_dir(&["10-calico.conflist"]);
    install(dir.path(), &entry()).unwrap();
    let first = fs::read_to_string(dir.path().join("10-calico.conflist")).unwrap();
    let again = install(dir.path(), &entry()).unwrap();
    assert!(!again.changed);
    assert_eq!(fs::read_to_string(&again.path).unwrap(), first);
}

#[test]
fn install_updates_an_older_entry_and_moves_it_last() {
    let dir = conf_dir(&["10-flannel.conflist"]);
    let path = dir.path().join("10-flannel.conflist");
    let mut document = json(&path);
    document["plugins"]
        .as_array_mut()
        .unwrap()
        .insert(0, serde_json::json!({"type": "ztunnel-cni", "old": true}));
    fs::write(&path, document.to_string()).unwrap();
    assert!(install(dir.path(), &entry()).unwrap().changed);
    let plugins = json(&path)["plugins"].as_array().unwrap().clone();
    assert_eq!(
        plugins
            .iter()
            .filter(|plugin| plugin["type"] == "ztunnel-cni")
            .count(),
        1
    );
    assert_eq!(plugins.last(), Some(&entry()));
    assert_eq!(plugins[0]["type"], "flannel");
}

#[test]
fn uninstall_restores_the_original_conflist() {
    for primary in PRIMARIES {
        let dir = conf_dir(&[primary]);
        install(dir.path(), &entry()).unwrap();
        assert_eq!(
            uninstall(dir.path()).unwrap(),
            Some(dir.path().join(primary))
        );
        assert_eq!(
            json(&dir.path().join(primary)),
            json(&testdata(primary)),
            "{primary}"
        );
        assert_eq!(
            uninstall(dir.path()).unwrap(),
            None,
            "second uninstall finds nothing"
        );
    }
}

#[test]
fn a_single_plugin_conf_becomes_a_conflist() {
    let dir = conf_dir(&["05-cilium.conf"]);
    let installed = install(dir.path(), &entry()).unwrap();
    assert_eq!(installed.path, dir.path().join("05-cilium.conflist"));
    assert!(
        !dir.path().join("05-cilium.conf").exists(),
        "the .conf would shadow the .conflist"
    );
    let written = json(&installed.path);
    assert_eq!(written["cniVersion"], "0.3.1");
    assert_eq!(written["name"], "cilium");
    assert_eq!(written["plugins"][0]["type"], "cilium-cni");
    assert!(written["plugins"][0].get("cniVersion").is_none());
    assert_eq!(written["plugins"][1], entry());
    uninstall(dir.path()).unwrap();
    assert_eq!(
        json(&installed.path)["plugins"].as_array().unwrap().len(),
        1
    );
}

#[test]
fn the_primary_is_the_first_configuration_in_name_order() {
    let dir = conf_dir(&[
        "10-calico.conflist",
        "20-harness-ptp.conflist",
        "05-cilium.conf",
    ]);
    fs::write(dir.path().join("00-notes.txt"), "not a config").unwrap();
    fs::write(dir.path().join("calico-kubeconfig"), "apiVersion: v1").unwrap();
    assert_eq!(
        primary_config(dir.path()).unwrap(),
        dir.path().join("05-cilium.conf")
    );
    fs::remove_file(dir.path().join("05-cilium.conf")).unwrap();
    install(dir.path(), &entry()).unwrap();
    assert_eq!(
        json(&dir.path().join("20-harness-ptp.conflist")),
        json(&testdata("20-harness-ptp.conflist"))
    );
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("ztunnel-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn problems_name_the_directory_or_file() {
    let empty = tempfile::tempdir().unwrap();
    let error = install(empty.path(), &entry()).unwrap_err().to_string();
    assert!(
        error.contains(&empty.path().display().to_string()) && error.contains("primary"),
        "{error}"
    );
    assert_eq!(uninstall(empty.path()).unwrap(), None);

    fs::write(empty.path().join("10-broken.conflist"), "{ not json").unwrap();
    let error = install(empty.path(), &entry()).unwrap_err().to_string();
    assert!(error.contains("10-broken.conflist"), "{error}");

    fs::write(
        empty.path().join("10-broken.conflist"),
        r#"{"name": "x", "plugins": 3}"#,
    )
    .unwrap();
    let error = install(empty.path(), &entry()).unwrap_err().to_string();
    assert!(error.contains("plugins"), "{error}");
}

#[test]
fn the_binary_is_copied_executable_and_removed() {
    let bin = tempfile::tempdir().unwrap();
    let source = bin.path().join("ztunnel");
    fs::write(&source, b"\x7fELF pretend").unwrap();
    let target = install_binary(&source, bin.path()).unwrap();
    assert_eq!(target, bin.path().join("ztunnel-cni"));
    assert_eq!(fs::read(&target).unwrap(), b"\x7fELF pretend");
    assert_eq!(
        fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o755
    );
    install_binary(&source, bin.path()).unwrap();
    remove_binary(bin.path()).unwrap();
    assert!(!target.exists());
    remove_binary(bin.path()).unwrap();
}
