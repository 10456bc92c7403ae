use std::collections::BTreeSet;

use super::*;
use crate::config::parse;

const MESH: &str = include_str!("../config/testdata/istio-local.yaml");

fn state(text: &str) -> State {
    State::from_config(parse(text, "test.yaml").unwrap()).unwrap()
}

fn address(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

#[test]
fn workloads_are_found_by_every_ip() {
    let state = state(MESH);
    let echo = state
        .workload_by_ip("2001:db8::2:10".parse().unwrap())
        .unwrap();
    assert_eq!(echo.name, "echo-1");
    assert_eq!(
        state
            .workload_by_ip("198.18.2.10".parse().unwrap())
            .unwrap(),
        echo
    );
    assert!(
        state
            .workload_by_ip("198.18.200.1".parse().unwrap())
            .is_none()
    );
    assert_eq!(
        state.workload_by_uid("cluster1//v1/Pod/ns2/echo-1"),
        Some(echo)
    );
}

#[test]
fn services_are_found_by_vip_and_port() {
    let state = state(MESH);
    let echo = state.service_by_vip(address("198.19.0.10:80")).unwrap();
    assert_eq!(echo.hostname, "echo.ns2.svc.cluster.local");
    assert!(
        state.service_by_vip(address("198.19.0.10:8080")).is_none(),
        "8080 is not a service port"
    );
    assert!(state.service_by_vip(address("198.19.0.99:80")).is_none());
    assert!(
        state
            .service_by_hostname("ns2", "echo.ns2.svc.cluster.local")
            .is_some()
    );
}

#[test]
fn endpoints_rotate_and_use_the_target_port() {
    let state = state(MESH);
    let echo = state.service_by_vip(address("198.19.0.10:80")).unwrap();
    let picked: Vec<SocketAddr> = (0..4)
        .map(|_| state.pick_endpoint(&echo, 80).unwrap().address)
        .collect();
    let distinct: BTreeSet<_> = picked.iter().collect();
    assert_eq!(distinct.len(), 2, "both endpoints are used: {picked:?}");
    assert!(
        picked.iter().all(|picked| picked.port() == 8080),
        "{picked:?}"
    );
    assert_eq!(picked[0], picked[2]);
    assert!(
        state.pick_endpoint(&echo, 81).is_none(),
        "no such service port"
    );
}

#[test]
fn target_port_zero_means_the_service_port() {
    let state = state(MESH);
    let db = state.service_by_vip(address("198.19.0.30:5432")).unwrap();
    assert_eq!(
        state.pick_endpoint(&db, 5432).unwrap().address,
        address("198.18.3.10:5432")
    );
}

#[test]
fn an_endpoint_that_refused_is_skipped_even_across_a_reload() {
    let handle = StateHandle::new(state(MESH));
    let snapshot = handle.snapshot();
    let echo = snapshot.service_by_vip(address("198.19.0.10:80")).unwrap();
    let refused = snapshot.pick_endpoint(&echo, 80).unwrap().address;
    handle.mark_refused(refused);
    handle.replace(state(MESH));
    let snapshot = handle.snapshot();
    for _ in 0..4 {
        assert_ne!(snapshot.pick_endpoint(&echo, 80).unwrap().address, refused);
    }
}

#[test]
fn unhealthy_and_unknown_endpoints_are_never_picked() {
    let state = state(
        "workloads:
- {uid: up, name: up, namespace: ns, workloadIps: [198.18.0.1], services: {ns/svc: {80: 8080}}}
- {uid: down, name: down, namespace: ns, workloadIps: [198.18.0.2], status: Unhealthy, services: {ns/svc: {80: 8080}}}
services:
- name: svc
  namespace: ns
  hostname: svc
  vips: [/198.19.0.1]
  ports: {80: 8080}
  endpoints:
    ghost: {workloadUid: ghost, port: {}, status: Healthy}
",
    );
    let service = state.service_by_vip(address("198.19.0.1:80")).unwrap();
    assert_eq!(service.endpoints.len(), 3);
    for _ in 0..4 {
        assert_eq!(
            state.pick_endpoint(&service, 80).unwrap().address,
            address("198.18.0.1:8080")
        );
    }
}

#[test]
fn a_waypoint_service_is_balanced_across_its_replicas() {
    let mut text = MESH.to_owned();
    text = text.replace(
        "- uid: cluster1//v1/Pod/legacy/db-0",
        "- uid: cluster1//v1/Pod/ns2/waypoint-2
  name: waypoint-2
  namespace: ns2
  serviceAccount: waypoint
  workloadIps: [\"198.18.2.21\"]
  protocol: HBONE
  services:
    \"ns2/waypoint.ns2.svc.cluster.local\":
      15008: 15008
- uid: cluster1//v1/Pod/legacy/db-0",
    );
    let state = state(&text);
    let echo = state
        .workload_by_ip("198.18.2.10".parse().unwrap())
        .unwrap();
    let waypoint = echo.waypoint.as_ref().unwrap();
    let picked: Vec<PickedEndpoint> = (0..2)
        .map(|_| state.resolve_waypoint(waypoint).unwrap())
        .collect();
    let addresses: BTreeSet<_> = picked.iter().map(|picked| picked.address).collect();
    assert_eq!(
        addresses,
        BTreeSet::from([address("198.18.2.20:15008"), address("198.18.2.21:15008")])
    );
    assert!(
        picked
            .iter()
            .all(|picked| picked.workload.service_account == "waypoint")
    );
    state.mark_refused(address("198.18.2.20:15008"));
    assert_eq!(
        state.resolve_waypoint(waypoint).unwrap().address,
        address("198.18.2.21:15008")
    );
}

#[test]
fn a_waypoint_named_by_address_is_that_workload() {
    let state = state(MESH);
    let waypoint = GatewayAddress {
        destination: "/198.18.2.20".parse().unwrap(),
        hbone_mtls_port: 15008,
    };
    let picked = state.resolve_waypoint(&waypoint).unwrap();
    assert_eq!(picked.workload.name, "waypoint-1");
    assert_eq!(picked.address, address("198.18.2.20:15008"));
    let by_vip = GatewayAddress {
        destination: "/198.19.0.20".parse().unwrap(),
        hbone_mtls_port: 15008,
    };
    assert_eq!(
        state.resolve_waypoint(&by_vip).unwrap().address,
        address("198.18.2.20:15008")
    );
    let nowhere = GatewayAddress {
        destination: "/198.18.99.1".parse().unwrap(),
        hbone_mtls_port: 15008,
    };
    assert!(state.resolve_waypoint(&nowhere).is_none());
}

#[test]
fn a_waypoint_is_defined_only_when_the_state_holds_it() {
    let state = state(MESH);
    let waypoint = |destination: &str| GatewayAddress {
        destination: destination.parse().unwrap(),
        hbone_mtls_port: 15008,
    };
    let cases = [
        ("/198.18.2.20", true),
        ("/198.19.0.20", true),
        ("ns2/waypoint.ns2.svc.cluster.local", true),
        ("/198.18.99.1", false),
        ("ns2/nowhere.ns2.svc.cluster.local", false),
    ];
    for (destination, expected) in cases {
        let defined = state.waypoint_defined(&waypoint(destination));
        println!("{destination}: defined = {defined}");
        assert_eq!(defined, expected, "{destination}");
    }
}

#[test]
fn policies_apply_by_scope() {
    let state = state(MESH);
    let names = |ip: &str| -> Vec<String> {
        let workload = state.workload_by_ip(ip.parse().unwrap()).unwrap();
        state.policies_for(&workload).map(Policy::key).collect()
    };
    assert_eq!(
        names("198.18.1.10"),
        ["istio-system/deny-9999", "ns1/ns1-from-mesh"]
    );
    assert_eq!(
        names("198.18.2.10"),
        ["istio-system/deny-9999", "ns2/only-sleep"]
    );
    assert_eq!(names("198.18.2.11"), ["istio-system/deny-9999"]);
}

#[test]
fn duplicates_are_refused() {
    let service = |name: &str, vip: &str| {
        format!(
            "- {{name: {name}, namespace: ns, hostname: {name}, vips: [/{vip}], ports: {{80: 80}}}}\n"
        )
    };
    let cases = [
        (
            format!("services:\n{}{}", service("a", "198.19.0.1"), service("b", "198.19.0.1")),
            "VIP 198.19.0.1 belongs to both services ns/a and ns/b",
        ),
        (
            format!("services:\n{}{}", service("a", "198.19.0.1"), service("a", "198.19.0.2")),
            "service ns/a is defined twice",
        ),
        (
            "workloads:\n- {uid: x, namespace: ns}\n- {uid: x, namespace: ns}\n".to_owned(),
            "workload uid \"x\" is used twice",
        ),
        (
            "policies:\n- {name: p, namespace: ns, scope: Global, action: Allow}\n- {name: p, namespace: ns, scope: Namespace, action: Deny}\n".to_owned(),
            "policy ns/p is defined twice",
        ),
        (
            "policies:\n- {name: p, namespace: \"\", scope: Namespace, action: Deny}\n".to_owned(),
            "policy \"p\" has scope Namespace but no namespace",
        ),
    ];
    for (text, expected) in cases {
        let error = State::from_config(parse(&text, "t").unwrap())
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected), "{expected:?} not in {error:?}");
    }
}

#[test]
fn empty_trust_domain_and_service_account_mean_the_defaults() {
    let state = state(
        "workloads:\n- {name: a, namespace: ns, trustDomain: \"\", serviceAccount: \"\", workloadIps: [198.18.0.1]}\n",
    );
    let workload = state.workload_by_ip("198.18.0.1".parse().unwrap()).unwrap();
    assert_eq!(
        workload.identity().to_string(),
        "spiffe://cluster.local/ns/ns/sa/default"
    );
}

#[test]
fn a_workload_gets_every_policy_it_names_once() {
    let state = state(
        "workloads:
- {name: a, namespace: ns, workloadIps: [198.18.0.1], authorizationPolicies: [ns/own, other/theirs, ns/mine, root/everyone]}
policies:
- {name: everyone, namespace: root, scope: Global, action: Allow}
- {name: own, namespace: ns, scope: Namespace, action: Allow}
- {name: theirs, namespace: other, scope: Namespace, action: Allow}
- {name: mine, namespace: ns, scope: WorkloadSelector, action: Allow}
- {name: not-mine, namespace: ns, scope: WorkloadSelector, action: Allow}
",
    );
    let workload = state.workload_by_ip("198.18.0.1".parse().unwrap()).unwrap();
    let names: Vec<String> = state.policies_for(&workload).map(Policy::key).collect();
    assert_eq!(
        names,
        ["root/everyone", "ns/own", "other/theirs", "ns/mine"]
    );
}

#[test]
fn a_waypoints_identities_are_those_of_its_replicas() {
    let state = state(MESH);
    let echo = state
        .workload_by_ip("198.18.2.10".parse().unwrap())
        .unwrap();
    let waypoint = echo.waypoint.as_ref().unwrap();
    assert_eq!(
        state.waypoint_identities(waypoint),
        vec![SpiffeId::new("cluster.local", "ns2", "waypoint")]
    );
    let by_address = GatewayAddress {
        destination: "/198.18.2.20".parse().unwrap(),
        hbone_mtls_port: 15008,
    };
    assert_eq!(
        state.waypoint_identities(&by_address),
        vec![SpiffeId::new("cluster.local", "ns2", "waypoint")]
    );
    let nowhere = GatewayAddress {
        destination: "ns2/missing.ns2.svc.cluster.local".parse().unwrap(),
        hbone_mtls_port: 15008,
    };
    assert!(
        state.waypoint_identities(&nowhere).is_empty(),
        "an unknown waypoint has no identity, so nothing is accepted as coming through it"
    );
}
