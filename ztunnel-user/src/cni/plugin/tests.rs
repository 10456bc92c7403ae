use std::{cell::RefCell, collections::BTreeMap};

use serde_json::json;

use super::*;
use crate::cni::plugin_main;

const ADD_STDIN: &str = include_str!("../testdata/add-stdin.json");

/// Records what the plugin asked for; fails when told to.
#[derive(Default)]
struct RecordingEnroller {
    calls: RefCell<Vec<String>>,
    fail_with: Option<String>,
}

impl RecordingEnroller {
    fn record(&self, call: String) -> Result<(), String> {
        self.calls.borrow_mut().push(call);
        self.fail_with.clone().map_or(Ok(()), Err)
    }
}

impl PodEnroller for RecordingEnroller {
    fn enroll(&self, pod: &Pod, _: &PluginSettings) -> Result<(), String> {
        self.record(format!(
            "enroll {}/{} {:?} {}",
            pod.namespace,
            pod.name,
            pod.ips,
            pod.netns.display()
        ))
    }

    fn remove(&self, pod: &RemovedPod, _: &PluginSettings) -> Result<(), String> {
        self.record(format!("remove {} {:?}", pod.container_id, pod.pod))
    }

    fn check(&self, pod: &Pod, _: &PluginSettings) -> Result<(), String> {
        self.record(format!("check {}/{}", pod.namespace, pod.name))
    }
}

fn environment(command: &str, namespace: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("CNI_COMMAND".into(), command.into()),
        ("CNI_CONTAINERID".into(), "c0ffee".into()),
        ("CNI_NETNS".into(), "/var/run/netns/pod-a".into()),
        ("CNI_IFNAME".into(), "eth0".into()),
        (
            "CNI_ARGS".into(),
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME=sleep-1"),
        ),
    ])
}

/// Runs the plugin; returns exit status and stdout as JSON (Null when empty).
fn invoke(
    environment: &BTreeMap<String, String>,
    stdin: &str,
    enroller: &RecordingEnroller,
) -> (i32, Value) {
    let mut stdout = Vec::new();
    let status = plugin_main(
        |name| environment.get(name).cloned(),
        stdin.as_bytes(),
        &mut stdout,
        enroller,
    );
    let text = String::from_utf8(stdout).unwrap();
    let document = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("stdout is not JSON ({error}): {text:?}"))
    };
    (status, document)
}

fn stdin_with(change: impl FnOnce(&mut Value)) -> String {
    let mut config: Value = serde_json::from_str(ADD_STDIN).unwrap();
    change(&mut config);
    config.to_string()
}

#[test]
fn add_enrolls_the_pod_and_hands_back_the_previous_result() {
    let enroller = RecordingEnroller::default();
    let (status, output) = invoke(&environment("ADD", "ns1"), ADD_STDIN, &enroller);
    assert_eq!(status, 0, "{output}");
    let input: Value = serde_json::from_str(ADD_STDIN).unwrap();
    assert_eq!(
        output, input["prevResult"],
        "prevResult passes through unchanged"
    );
    assert_eq!(
        enroller.calls.borrow().as_slice(),
        ["enroll ns1/sleep-1 [198.18.1.5, 2001:db8:1::5] /var/run/netns/pod-a"]
    );
}

#[test]
fn an_older_result_gets_the_version_it_lacks() {
    let stdin = stdin_with(|config| {
        config["cniVersion"] = json!("0.4.0");
        config["prevResult"]
            .as_object_mut()
            .unwrap()
            .remove("cniVersion");
    });
    let (status, output) = invoke(
        &environment("ADD", "ns1"),
        &stdin,
        &RecordingEnroller::default(),
    );
    assert_eq!((status, output["cniVersion"].as_str()), (0, Some("0.4.0")));
}

#[test]
fn excluded_namespaces_pass_through_untouched() {
    let enroller = RecordingEnroller::default();
    let (status, output) = invoke(&environment("ADD", "kube-system"), ADD_STDIN, &enroller);
    assert_eq!(status, 0);
    assert_eq!(output["ips"][0]["address"], "198.18.1.5/24");
    assert!(enroller.calls.borrow().is_empty());
}

#[test]
fn only_pods_in_the_workload_configuration_are_enrolled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("workloads.yaml");
    std::fs::write(
        &path,
        "workloads:\n- {name: other, namespace: ns1, workloadIps: [198.18.1.5]}\n",
    )
    .unwrap();
    let stdin = stdin_with(|config| config["workloadConfig"] = json!(path));
    let listed = RecordingEnroller::default();
    assert_eq!(invoke(&environment("ADD", "ns1"), &stdin, &listed).0, 0);
    assert_eq!(listed.calls.borrow().len(), 1, "listed by IP");

    std::fs::write(
        &path,
        "workloads:\n- {name: other, namespace: ns1, workloadIps: [198.18.1.99]}\n",
    )
    .unwrap();
    let unlisted = RecordingEnroller::default();
    let (status, output) = invoke(&environment("ADD", "ns1"), &stdin, &unlisted);
    assert_eq!(status, 0);
    assert_eq!(output["ips"][0]["address"], "198.18.1.5/24");
    assert!(
        unlisted.calls.borrow().is_empty(),
        "not listed: passes through"
    );

    std::fs::remove_file(&path).unwrap();
    let (status, error) = invoke(
        &environment("ADD", "ns1"),
        &stdin,
        &RecordingEnroller::default(),
    );
    assert_eq!((status, error["code"].as_u64()), (1, Some(5)), "{error}");
}

#[test]
fn add_without_a_previous_result_is_refused() {
    let stdin = stdin_with(|config| {
        config.as_object_mut().unwrap().remove("prevResult");
    });
    let enroller = RecordingEnroller::default();
    let (status, error) = invoke(&environment("ADD", "ns1"), &stdin, &enroller);
    assert_eq!((status, error["code"].as_u64()), (1, Some(7)));
    assert_eq!(error["cniVersion"], "1.0.0");
    assert!(
        error["msg"].as_str().unwrap().contains("chained"),
        "{error}"
    );
    assert!(enroller.calls.borrow().is_empty());
}

#[test]
fn a_failed_enrollment_is_reported_with_details() {
    let enroller = RecordingEnroller {
        fail_with: Some("ztunnel socket refused".into()),
        ..Default::default()
    };
    let (status, error) = invoke(&environment("ADD", "ns1"), ADD_STDIN, &enroller);
    assert_eq!((status, error["code"].as_u64()), (1, Some(100)));
    assert_eq!(error["details"], "ztunnel socket refused");
}

#[test]
fn malformed_input_gets_the_spec_error_codes() {
    let enroller = RecordingEnroller::default();
    let old = stdin_with(|config| config["cniVersion"] = json!("0.2.0"));
    assert_eq!(
        invoke(&environment("ADD", "ns1"), &old, &enroller).1["code"],
        1
    );
    assert_eq!(
        invoke(&environment("ADD", "ns1"), "{not json", &enroller).1["code"],
        6
    );
    let mut no_netns = environment("ADD", "ns1");
    no_netns.remove("CNI_NETNS");
    let (status, error) = invoke(&no_netns, ADD_STDIN, &enroller);
    assert_eq!((status, error["code"].as_u64()), (1, Some(4)));
    assert!(
        error["msg"].as_str().unwrap().contains("CNI_NETNS"),
        "{error}"
    );
    let no_address = stdin_with(|config| config["prevResult"]["ips"] = json!([]));
    // An empty address list is a valid result with nothing to enroll by IP.
    assert_eq!(
        invoke(&environment("ADD", "ns1"), &no_address, &enroller).0,
        0
    );
    let bad_address = stdin_with(|config| config["prevResult"]["ips"] = json!([{"address": "x"}]));
    assert_eq!(
        invoke(&environment("ADD", "ns1"), &bad_address, &enroller).1["code"],
        7
    );
}

#[test]
fn del_succeeds_for_unknown_pods_and_without_a_netns() {
    let enroller = RecordingEnroller::default();
    let mut del = environment("DEL", "ns1");
    del.remove("CNI_NETNS");
    let (status, output) = invoke(&del, ADD_STDIN, &enroller);
    assert_eq!((status, output), (0, Value::Null));
    assert_eq!(
        enroller.calls.borrow().as_slice(),
        ["remove c0ffee Some((\"ns1\", \"sleep-1\"))"]
    );
}

#[test]
fn check_verifies_the_enrollment_and_prints_nothing() {
    let enroller = RecordingEnroller::default();
    let (status, output) = invoke(&environment("CHECK", "ns1"), ADD_STDIN, &enroller);
    assert_eq!((status, output), (0, Value::Null));
    assert_eq!(enroller.calls.borrow().as_slice(), ["check ns1/sleep-1"]);
}

#[test]
fn version_needs_no_stdin() {
    let environment = BTreeMap::from([("CNI_COMMAND".to_owned(), "VERSION".to_owned())]);
    let (status, output) = invoke(&environment, "", &RecordingEnroller::default());
    assert_eq!(status, 0);
    assert_eq!(
        output["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
    );
}
