//! Applying responses: updates and removals, per-resource rejection, and all-or-nothing when
//! the result would be inconsistent.

use prost::Message;

use super::*;
use crate::proto::envoy::service::discovery::v3::Resource;

fn workload_resource(uid: &str, ip: [u8; 4]) -> Resource {
    let address = pb::Address {
        r#type: Some(pb::address::Type::Workload(pb::Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "ns1".into(),
            addresses: vec![ip.to_vec()],
            tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
            ..pb::Workload::default()
        })),
    };
    resource(uid, ADDRESS_TYPE_URL, address.encode_to_vec())
}

fn resource(name: &str, type_url: &str, value: Vec<u8>) -> Resource {
    Resource {
        name: name.into(),
        version: "1".into(),
        resource: Some(prost_types::Any {
            type_url: type_url.into(),
            value,
        }),
        ..Resource::default()
    }
}

fn response(resources: Vec<Resource>, removed: &[&str]) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: ADDRESS_TYPE_URL.into(),
        resources,
        removed_resources: removed.iter().map(ToString::to_string).collect(),
        nonce: "n".into(),
        ..DeltaDiscoveryResponse::default()
    }
}

fn uids(state: &State) -> Vec<String> {
    state
        .workloads()
        .map(|workload| workload.uid.clone())
        .collect()
}

#[test]
fn updates_and_removals_apply() {
    let mut store = ResourceStore::default();
    let applied = store
        .apply(&response(
            vec![
                workload_resource("a", [198, 18, 1, 2]),
                workload_resource("b", [198, 18, 1, 3]),
            ],
            &[],
        ))
        .unwrap();
    assert_eq!(uids(&applied.state), ["a", "b"]);
    let applied = store
        .apply(&response(vec![], &["a", "never-sent"]))
        .unwrap();
    assert_eq!(uids(&applied.state), ["b"]);
    assert!(applied.rejected.is_empty());
    assert_eq!(store.versions(ADDRESS_TYPE_URL).len(), 1);
}

#[test]
fn a_bad_resource_is_rejected_and_the_rest_applies() {
    let mut store = ResourceStore::default();
    store
        .apply(&response(
            vec![workload_resource("a", [198, 18, 1, 2])],
            &[],
        ))
        .unwrap();
    let undecodable = resource("broken", ADDRESS_TYPE_URL, vec![0x0a, 0x7f, 0x01]);
    let wrong_type = resource("policy", AUTHORIZATION_TYPE_URL, Vec::new());
    let mut legacy = workload_resource("a", [198, 18, 1, 9]);
    let mut address =
        pb::Address::decode(legacy.resource.as_ref().unwrap().value.as_slice()).unwrap();
    if let Some(pb::address::Type::Workload(workload)) = &mut address.r#type {
        workload.tunnel_protocol = pb::TunnelProtocol::LegacyIstioMtls as i32;
    }
    legacy.resource.as_mut().unwrap().value = address.encode_to_vec();
    let applied = store
        .apply(&response(
            vec![
                undecodable,
                wrong_type,
                legacy,
                workload_resource("c", [198, 18, 1, 4]),
            ],
            &[],
        ))
        .unwrap();
    let errors: Vec<String> = applied.rejected.iter().map(ToString::to_string).collect();
    println!("rejected: {errors:#?}");
    assert_eq!(errors.len(), 3);
    assert!(errors[0].contains("\"broken\"") && errors[0].contains("cannot decode"));
    assert!(errors[1].contains("\"policy\""));
    assert!(errors[2].contains("Workload.tunnel_protocol"));
    // The rejected update of "a" left its previous version in force.
    assert_eq!(uids(&applied.state), ["a", "c"]);
    let a = applied.state.workload_by_uid("a").unwrap();
    assert_eq!(
        a.workload_ips,
        ["198.18.1.2".parse::<std::net::IpAddr>().unwrap()]
    );
}

#[test]
fn an_inconsistent_update_changes_nothing() {
    let mut store = ResourceStore::default();
    store
        .apply(&response(
            vec![workload_resource("a", [198, 18, 1, 2])],
            &[],
        ))
        .unwrap();
    let error = store
        .apply(&response(
            vec![
                workload_resource("b", [198, 18, 1, 2]),
                workload_resource("c", [198, 18, 1, 3]),
            ],
            &[],
        ))
        .unwrap_err();
    println!("{error}");
    assert!(matches!(
        error,
        ApplyError::Inconsistent(StateError::DuplicateWorkloadIp { .. })
    ));
    // "a" is still held and "b" and "c" are not: the next state is built from the last good set.
    assert_eq!(uids(&store.build().unwrap()), ["a"]);
}

#[test]
fn policies_and_addresses_make_one_state() {
    let mut store = ResourceStore::default();
    store
        .apply(&response(
            vec![workload_resource("a", [198, 18, 1, 2])],
            &[],
        ))
        .unwrap();
    let policy = security::Authorization {
        name: "deny-all".into(),
        namespace: "ns1".into(),
        scope: security::Scope::Namespace as i32,
        action: security::Action::Deny as i32,
        ..security::Authorization::default()
    };
    let applied = store
        .apply(&DeltaDiscoveryResponse {
            type_url: AUTHORIZATION_TYPE_URL.into(),
            resources: vec![resource(
                "ns1/deny-all",
                AUTHORIZATION_TYPE_URL,
                policy.encode_to_vec(),
            )],
            ..DeltaDiscoveryResponse::default()
        })
        .unwrap();
    assert_eq!(uids(&applied.state), ["a"]);
    assert_eq!(applied.state.policies().count(), 1);
    assert!(matches!(
        store.apply(&DeltaDiscoveryResponse {
            type_url: "type.googleapis.com/other".into(),
            ..DeltaDiscoveryResponse::default()
        }),
        Err(ApplyError::UnknownType(_))
    ));
}
