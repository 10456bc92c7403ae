use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::{
    authz::{Action, Scope, StringMatch},
    state::{GatewayDestination, Protocol},
};

const ISTIO_LOCAL: &str = include_str!("testdata/istio-local.yaml");

fn unsupported(text: &str) -> (String, usize, String) {
    match parse(text, "test.yaml") {
        Err(ConfigError::UnsupportedField { field, line, .. }) => {
            let message = parse(text, "test.yaml").unwrap_err().to_string();
            (field, line, message)
        }
        other => panic!("expected an unsupported-field error, got {other:?}"),
    }
}

#[test]
fn istio_shaped_file_loads_with_every_supported_field() {
    let config = parse(ISTIO_LOCAL, "istio-local.yaml").unwrap();
    assert_eq!(config.workloads.len(), 5);
    assert_eq!(config.services.len(), 3);
    assert_eq!(config.policies.len(), 3);

    let sleep = &config.workloads[0];
    assert_eq!(
        sleep.identity().to_string(),
        "spiffe://cluster.local/ns/ns1/sa/sleep"
    );
    assert_eq!(sleep.protocol, Protocol::Hbone);
    assert_eq!(sleep.canonical_revision, "v1");
    let echo = &config.workloads[1];
    assert_eq!(
        echo.identity().to_string(),
        "spiffe://example.org/ns/ns2/sa/echo"
    );
    assert_eq!(
        echo.workload_ips[1],
        "2001:db8::2:10".parse::<IpAddr>().unwrap()
    );
    let waypoint = echo.waypoint.as_ref().unwrap();
    assert!(matches!(
        waypoint.destination,
        GatewayDestination::Hostname(_)
    ));
    assert_eq!(waypoint.hbone_mtls_port, 15008);
    assert_eq!(config.workloads[4].protocol, Protocol::Tcp);
    assert_eq!(config.workloads[4].service_account, "default");

    assert_eq!(config.services[0].ports.get(&80), Some(&8080));
    assert_eq!(config.services[2].endpoints.len(), 1);

    let only_sleep = &config.policies[1];
    assert_eq!(
        (only_sleep.scope, only_sleep.action),
        (Scope::WorkloadSelector, Action::Allow)
    );
    assert_eq!(only_sleep.rules[0].len(), 2, "two clauses");
    assert_eq!(
        only_sleep.rules[0][0].len(),
        2,
        "two matches in the first clause"
    );
    assert_eq!(
        only_sleep.rules[0][0][0].principals[1],
        StringMatch::Suffix("/sa/sleep".into())
    );
    assert_eq!(
        config.policies[2].rules[0][0][0].namespaces[0],
        StringMatch::Presence()
    );
}

#[test]
fn istio_shaped_file_builds_a_consistent_state() {
    let state = State::from_config(parse(ISTIO_LOCAL, "istio-local.yaml").unwrap()).unwrap();
    let echo = state
        .service_by_vip(SocketAddr::from(([198, 19, 0, 10], 80)))
        .unwrap();
    assert_eq!(
        echo.endpoints.len(),
        2,
        "endpoints come from the workloads' services maps"
    );
    assert!(
        state
            .service_by_vip(SocketAddr::from(([198, 19, 0, 10], 81)))
            .is_none()
    );
}

#[test]
fn empty_file_is_an_empty_mesh() {
    assert_eq!(parse("", "empty.yaml").unwrap(), LocalConfig::default());
    assert_eq!(
        parse("# nothing yet\n", "empty.yaml").unwrap(),
        LocalConfig::default()
    );
}

#[test]
fn istio_field_not_implemented_is_named_with_its_line() {
    let (field, line, message) = unsupported(
        "workloads:\n- name: a\n  namespace: ns\n  networkGateway:\n    destination: /1.1.1.1\n",
    );
    assert_eq!((field.as_str(), line), ("networkGateway", 4));
    assert!(
        message.contains("line 4") && message.contains("`networkGateway`"),
        "{message}"
    );
    assert!(message.contains("does not implement"), "{message}");
}

#[test]
fn misspelled_field_is_named_with_its_line() {
    let (field, line, message) = unsupported(
        "services: []\nworkloads:\n- namespace: ns\n  workload_ips: [\"198.18.0.1\"]\n",
    );
    assert_eq!((field.as_str(), line), ("workload_ips", 4));
    assert!(message.contains("camelCase"), "{message}");
}

#[test]
fn unsupported_field_deep_in_a_policy_is_named_with_its_line() {
    let text = "policies:\n- name: p\n  namespace: ns\n  scope: Global\n  action: Allow\n  rules:\n  - - - requestPrincipals: [x]\n";
    let (field, line, _) = unsupported(text);
    assert_eq!((field.as_str(), line), ("requestPrincipals", 7));
}

#[test]
fn unsupported_top_level_section_is_named() {
    let (field, line, _) = unsupported("workloads: []\ngateways: []\n");
    assert_eq!((field.as_str(), line), ("gateways", 2));
}

#[test]
fn broken_yaml_is_a_syntax_error_with_a_line() {
    let error = parse(
        "workloads:\n- name: a\n  namespace: [unclosed\n",
        "bad.yaml",
    )
    .unwrap_err();
    assert!(matches!(error, ConfigError::Syntax { .. }), "{error:?}");
    assert!(error.to_string().starts_with("bad.yaml: line "), "{error}");
}

#[test]
fn wrong_values_are_refused_with_a_line() {
    for (text, expected) in [
        (
            "workloads:\n- namespace: ns\n  workloadIps: [\"not-an-ip\"]\n",
            "line 3",
        ),
        (
            "workloads:\n- namespace: ns\n  protocol: QUIC\n",
            "unknown variant `QUIC`",
        ),
        (
            "services:\n- name: s\n  namespace: ns\n  hostname: h\n  vips: [\"198.19.0.1\"]\n",
            "network/ip",
        ),
        (
            "policies:\n- name: p\n  namespace: ns\n  scope: Cluster\n  action: Allow\n",
            "unknown variant `Cluster`",
        ),
        (
            "policies:\n- name: p\n  namespace: ns\n  scope: Global\n  action: Allow\n  rules: [[[{sourceIps: [\"198.18.0.0/33\"]}]]]\n",
            "line 6",
        ),
        (
            "policies:\n- name: p\n  namespace: ns\n  scope: Global\n  action: Allow\n  rules: [[[{sourceIps: [\"198.18.0.0/33\"]}]]]\n",
            "prefix length 33 is longer than an IPv4 address (32 bits)",
        ),
        (
            "policies:\n- name: p\n  namespace: ns\n  scope: Global\n  action: Allow\n  rules: [[[{destinationIps: [\"198.18.0.300/24\"]}]]]\n",
            "\"198.18.0.300\" is not an IP address",
        ),
        (
            "workloads:\n- name: no-namespace\n",
            "missing field `namespace`",
        ),
    ] {
        let error = parse(text, "bad.yaml").expect_err(text).to_string();
        println!("{error}");
        assert!(error.contains(expected), "{expected:?} not in {error:?}");
    }
}

#[test]
fn inconsistent_file_is_refused_with_both_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dup.yaml");
    std::fs::write(
        &path,
        "workloads:\n- {uid: a, name: a, namespace: ns, workloadIps: [198.18.0.1]}\n- {uid: b, name: b, namespace: ns, workloadIps: [198.18.0.1]}\n",
    )
    .unwrap();
    let error = load_state(&path).unwrap_err();
    assert!(matches!(
        error,
        ConfigError::Invalid {
            source: StateError::DuplicateWorkloadIp { .. },
            ..
        }
    ));
    let message = error.to_string();
    assert!(
        message.contains("ns/a") && message.contains("ns/b") && message.contains("198.18.0.1"),
        "{message}"
    );
}

#[test]
fn missing_file_names_the_path() {
    let error = load(Path::new("/nonexistent/ztunnel.yaml")).unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/ztunnel.yaml"),
        "{error}"
    );
}

#[test]
fn what_we_write_we_read_back() {
    let config = parse(ISTIO_LOCAL, "istio-local.yaml").unwrap();
    let written = serde_norway::to_string(&config).unwrap();
    assert!(
        written.contains("!Exact example.org/ns/ns1/sa/sleep"),
        "Istio's tag form:\n{written}"
    );
    assert_eq!(
        parse(&written, "written.yaml").unwrap(),
        config,
        "{written}"
    );
}

#[test]
fn fields_istio_always_writes_load_at_their_default() {
    let text = "workloads:
- uid: a
  name: a
  namespace: ns
  networkMode: Standard
  capacity: 1
  nativeTunnel: false
  locality: {region: r1, zone: z1, subzone: \"\"}
services:
- name: s
  namespace: ns
  hostname: s.ns.svc.cluster.local
  vips: []
  ports: {}
  visibility: Public
  cidrVips: []
  weightedWaypoints: []
";
    let config = parse(text, "istio-written.yaml").unwrap();
    assert_eq!(config.workloads[0].locality.zone, "z1");
}

#[test]
fn other_values_of_those_fields_are_refused_at_their_line() {
    let workload = |field: &str| format!("workloads:\n- name: a\n  namespace: ns\n  {field}\n");
    let service =
        |field: &str| format!("services:\n- name: s\n  namespace: ns\n  hostname: h\n  {field}\n");
    for (text, field, line) in [
        (workload("capacity: 3"), "capacity", 4),
        (workload("nativeTunnel: true"), "nativeTunnel", 4),
        (service("cidrVips: [\"/198.19.0.0/16\"]"), "cidrVips", 5),
        (
            service("weightedWaypoints: [{weight: 1}]"),
            "weightedWaypoints",
            5,
        ),
    ] {
        let error = parse(&text, "t.yaml").unwrap_err();
        assert!(
            matches!(&error, ConfigError::UnsupportedValue { field: f, line: l, .. } if f == field && *l == line),
            "{field}: {error:?}"
        );
        assert!(
            error.to_string().contains(&format!("line {line}")),
            "{error}"
        );
    }
    for (text, expected) in [
        (
            workload("networkMode: HostNetwork"),
            "networkMode: unknown variant `HostNetwork`",
        ),
        (
            service("visibility: Namespace"),
            "visibility: unknown variant `Namespace`",
        ),
    ] {
        let error = parse(&text, "t.yaml").unwrap_err().to_string();
        assert!(
            error.contains(expected) && error.contains("line "),
            "{error}"
        );
    }
}
