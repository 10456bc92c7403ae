//! Every field of Istio's `Workload`, `Service` and `Authorization` that the file format
//! supports lands where the file puts it; every one it does not support is refused by name.

use std::collections::HashMap;

use super::*;
use crate::proto::istio::{security, workload as pb};

/// A field and a change to a valid resource that makes that field unacceptable.
type Change<T> = (&'static str, Box<dyn Fn(&mut T)>);

fn v4(text: &str) -> Vec<u8> {
    text.parse::<Ipv4Addr>().unwrap().octets().to_vec()
}

fn v6(text: &str) -> Vec<u8> {
    text.parse::<Ipv6Addr>().unwrap().octets().to_vec()
}

fn full_workload() -> pb::Workload {
    pb::Workload {
        uid: "cluster1//v1/Pod/ns1/web-1".into(),
        name: "web-1".into(),
        namespace: "ns1".into(),
        addresses: vec![v4("198.18.2.2"), v6("2001:db8:2::2")],
        hostname: "web-1.example".into(),
        network: "net1".into(),
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        trust_domain: "example.org".into(),
        service_account: "web".into(),
        waypoint: Some(pb::GatewayAddress {
            destination: Some(pb::gateway_address::Destination::Hostname(
                pb::NamespacedHostname {
                    namespace: "ns1".into(),
                    hostname: "waypoint.ns1.svc.cluster.local".into(),
                },
            )),
            hbone_mtls_port: 15008,
        }),
        node: "node-2".into(),
        canonical_name: "web".into(),
        canonical_revision: "v1".into(),
        workload_type: pb::WorkloadType::Pod as i32,
        workload_name: "web-deploy".into(),
        services: HashMap::from([(
            "ns1/web.ns1.svc.cluster.local".to_owned(),
            pb::PortList {
                ports: vec![pb::Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: pb::AppProtocol::Http11 as i32,
                }],
            },
        )]),
        authorization_policies: vec!["ns1/allow-web".into()],
        status: pb::WorkloadStatus::Unhealthy as i32,
        cluster_id: "cluster1".into(),
        locality: Some(pb::Locality {
            region: "r".into(),
            zone: "z".into(),
            subzone: "s".into(),
        }),
        capacity: Some(1),
        ..pb::Workload::default()
    }
}

#[test]
fn every_supported_workload_field_lands_where_the_file_puts_it() {
    let converted = workload(full_workload()).unwrap();
    let expected: Workload = serde_norway::from_str(
        r#"
uid: cluster1//v1/Pod/ns1/web-1
name: web-1
namespace: ns1
hostname: web-1.example
network: net1
protocol: HBONE
trustDomain: example.org
serviceAccount: web
workloadIps: ["198.18.2.2", "2001:db8:2::2"]
waypoint: {destination: ns1/waypoint.ns1.svc.cluster.local, hboneMtlsPort: 15008}
node: node-2
canonicalName: web
canonicalRevision: v1
workloadType: pod
workloadName: web-deploy
services: {"ns1/web.ns1.svc.cluster.local": {80: 8080}}
authorizationPolicies: [ns1/allow-web]
status: Unhealthy
clusterId: cluster1
locality: {region: r, zone: z, subzone: s}
"#,
    )
    .unwrap();
    assert_eq!(converted, expected);
}

#[test]
fn workload_defaults_match_the_files() {
    let converted = workload(pb::Workload {
        namespace: "ns1".into(),
        ..pb::Workload::default()
    })
    .unwrap();
    // Istio's default workload type is DEPLOYMENT (enum value 0).
    let expected: Workload =
        serde_norway::from_str("namespace: ns1\nworkloadType: deployment\n").unwrap();
    assert_eq!(converted, expected);
    assert_eq!(
        converted.identity().to_string(),
        "spiffe://cluster.local/ns/ns1/sa/default"
    );
}

#[test]
fn waypoint_by_address_keeps_its_network() {
    let mut found = full_workload();
    found.waypoint = Some(pb::GatewayAddress {
        destination: Some(pb::gateway_address::Destination::Address(
            pb::NetworkAddress {
                network: "net1".into(),
                address: v4("198.18.1.9"),
                length: None,
            },
        )),
        hbone_mtls_port: 15008,
    });
    let converted = workload(found).unwrap();
    assert_eq!(
        converted.waypoint.unwrap().destination.to_string(),
        "net1/198.18.1.9"
    );
}

fn refused_field(result: Result<impl std::fmt::Debug, ConvertError>) -> &'static str {
    match result {
        Err(ConvertError::Unsupported { field, .. } | ConvertError::Invalid { field, .. }) => field,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn unsupported_workload_fields_are_refused_by_name() {
    let cases: Vec<Change<pb::Workload>> = vec![
        (
            "Workload.tunnel_protocol",
            Box::new(|w| w.tunnel_protocol = pb::TunnelProtocol::LegacyIstioMtls as i32),
        ),
        (
            "Workload.tunnel_protocol",
            Box::new(|w| w.tunnel_protocol = 99),
        ),
        (
            "Workload.network_gateway",
            Box::new(|w| w.network_gateway = w.waypoint.clone()),
        ),
        (
            "Workload.native_tunnel",
            Box::new(|w| w.native_tunnel = true),
        ),
        (
            "Workload.application_tunnel",
            Box::new(|w| {
                w.application_tunnel = Some(pb::ApplicationTunnel {
                    protocol: pb::application_tunnel::Protocol::Proxy as i32,
                    port: 15088,
                });
            }),
        ),
        (
            "Workload.network_mode",
            Box::new(|w| w.network_mode = pb::NetworkMode::HostNetwork as i32),
        ),
        ("Workload.capacity", Box::new(|w| w.capacity = Some(3))),
        (
            "Workload.addresses",
            Box::new(|w| w.addresses = vec![vec![1, 2, 3]]),
        ),
        (
            "Workload.services",
            Box::new(|w| {
                w.services
                    .values_mut()
                    .for_each(|ports| ports.ports[0].target_port = 70_000);
            }),
        ),
        (
            "Workload.waypoint",
            Box::new(|w| w.waypoint = Some(pb::GatewayAddress::default())),
        ),
        ("Workload.status", Box::new(|w| w.status = 7)),
        ("Workload.workload_type", Box::new(|w| w.workload_type = 9)),
    ];
    for (field, change) in cases {
        let mut found = full_workload();
        change(&mut found);
        let refused = refused_field(workload(found));
        println!("{field}: refused as {refused}");
        assert_eq!(refused, field);
    }
    // A disabled application tunnel asks for nothing and is accepted.
    let mut found = full_workload();
    found.application_tunnel = Some(pb::ApplicationTunnel::default());
    assert!(workload(found).is_ok());
}

fn full_service() -> pb::Service {
    pb::Service {
        name: "web".into(),
        namespace: "ns1".into(),
        hostname: "web.ns1.svc.cluster.local".into(),
        addresses: vec![
            pb::NetworkAddress {
                network: String::new(),
                address: v4("198.18.200.1"),
                length: None,
            },
            pb::NetworkAddress {
                network: String::new(),
                address: v6("2001:db8:200::1"),
                length: None,
            },
        ],
        ports: vec![pb::Port {
            service_port: 80,
            target_port: 8080,
            app_protocol: pb::AppProtocol::Http2 as i32,
        }],
        subject_alt_names: vec!["spiffe://cluster.local/ns/ns1/sa/other".into()],
        waypoint: Some(pb::GatewayAddress {
            destination: Some(pb::gateway_address::Destination::Address(
                pb::NetworkAddress {
                    network: String::new(),
                    address: v4("198.18.1.9"),
                    length: None,
                },
            )),
            hbone_mtls_port: 15008,
        }),
        canonical: true,
        ip_families: pb::IpFamilies::Dual as i32,
        ..pb::Service::default()
    }
}

#[test]
fn every_supported_service_field_lands_where_the_file_puts_it() {
    let converted = service(full_service()).unwrap();
    let expected: Service = serde_norway::from_str(
        r#"
name: web
namespace: ns1
hostname: web.ns1.svc.cluster.local
vips: ["/198.18.200.1", "/2001:db8:200::1"]
ports: {80: 8080}
subjectAltNames: ["spiffe://cluster.local/ns/ns1/sa/other"]
waypoint: {destination: /198.18.1.9, hboneMtlsPort: 15008}
canonical: true
"#,
    )
    .unwrap();
    assert_eq!(converted, expected);
}

#[test]
fn unsupported_service_fields_are_refused_by_name() {
    let cases: Vec<Change<pb::Service>> = vec![
        (
            "Service.load_balancing",
            Box::new(|s| {
                s.load_balancing = Some(pb::LoadBalancing {
                    mode: pb::load_balancing::Mode::Failover as i32,
                    ..pb::LoadBalancing::default()
                });
            }),
        ),
        (
            "Service.weighted_waypoints",
            Box::new(|s| s.weighted_waypoints = vec![pb::WeightedWaypoint::default()]),
        ),
        (
            "Service.visibility",
            Box::new(|s| s.visibility = pb::service::Visibility::Namespace as i32),
        ),
        (
            "Service.addresses",
            Box::new(|s| s.addresses[0].length = Some(24)),
        ),
        (
            "Service.addresses",
            Box::new(|s| s.addresses[0].address = vec![1; 5]),
        ),
        (
            "Service.ports",
            Box::new(|s| s.ports[0].service_port = 65_536),
        ),
    ];
    for (field, change) in cases {
        let mut found = full_service();
        change(&mut found);
        let refused = refused_field(service(found));
        println!("{field}: refused as {refused}");
        assert_eq!(refused, field);
    }
    // Default (empty) load balancing asks for nothing.
    let mut found = full_service();
    found.load_balancing = Some(pb::LoadBalancing::default());
    assert!(service(found).is_ok());
}

#[test]
fn an_address_resource_is_a_workload_or_a_service() {
    let as_workload = address(pb::Address {
        r#type: Some(pb::address::Type::Workload(full_workload())),
    });
    assert!(matches!(as_workload, Ok(AddressResource::Workload(_))));
    let as_service = address(pb::Address {
        r#type: Some(pb::address::Type::Service(full_service())),
    });
    assert!(matches!(as_service, Ok(AddressResource::Service(_))));
    assert_eq!(
        address(pb::Address::default()),
        Err(ConvertError::EmptyAddress)
    );
}

fn exact(value: &str) -> security::StringMatch {
    security::StringMatch {
        match_type: Some(security::string_match::MatchType::Exact(value.into())),
    }
}

fn full_policy() -> security::Authorization {
    use security::string_match::MatchType;
    let range = |ip: Vec<u8>, length| security::Address {
        address: ip,
        length,
    };
    security::Authorization {
        name: "allow-web".into(),
        namespace: "ns1".into(),
        scope: security::Scope::WorkloadSelector as i32,
        action: security::Action::Deny as i32,
        rules: vec![security::Rule {
            clauses: vec![security::Clause {
                matches: vec![security::Match {
                    namespaces: vec![exact("ns1")],
                    not_namespaces: vec![security::StringMatch {
                        match_type: Some(MatchType::Prefix("kube-".into())),
                    }],
                    principals: vec![security::StringMatch {
                        match_type: Some(MatchType::Suffix("/sa/client".into())),
                    }],
                    not_principals: vec![security::StringMatch {
                        match_type: Some(MatchType::Presence(())),
                    }],
                    source_ips: vec![range(v4("198.18.1.0"), 24)],
                    not_source_ips: vec![range(v6("2001:db8:1::"), 64)],
                    destination_ips: vec![range(v4("198.18.2.2"), 32)],
                    not_destination_ips: vec![range(v4("198.18.3.0"), 24)],
                    destination_ports: vec![8080],
                    not_destination_ports: vec![22],
                    service_accounts: vec![security::ServiceAccountMatch {
                        namespace: "ns1".into(),
                        service_account: "client".into(),
                    }],
                    not_service_accounts: vec![security::ServiceAccountMatch {
                        namespace: "ns2".into(),
                        service_account: "bad".into(),
                    }],
                    extensions: Vec::new(),
                }],
            }],
        }],
        dry_run: true,
        extensions: Vec::new(),
    }
}

#[test]
fn every_supported_policy_field_lands_where_the_file_puts_it() {
    let converted = authorization(full_policy()).unwrap();
    let expected: Policy = serde_norway::from_str(
        r#"
name: allow-web
namespace: ns1
scope: WorkloadSelector
action: Deny
dryRun: true
rules:
- - - namespaces: [{Exact: ns1}]
      notNamespaces: [{Prefix: kube-}]
      principals: [{Suffix: /sa/client}]
      notPrincipals: [{Presence: []}]
      sourceIps: [198.18.1.0/24]
      notSourceIps: ["2001:db8:1::/64"]
      destinationIps: [198.18.2.2/32]
      notDestinationIps: [198.18.3.0/24]
      destinationPorts: [8080]
      notDestinationPorts: [22]
      serviceAccounts: [{namespace: ns1, serviceAccount: client}]
      notServiceAccounts: [{namespace: ns2, serviceAccount: bad}]
"#,
    )
    .unwrap();
    assert_eq!(converted, expected);
    let global = authorization(security::Authorization {
        name: "g".into(),
        namespace: "istio-system".into(),
        ..security::Authorization::default()
    })
    .unwrap();
    assert_eq!(
        (global.scope, global.action),
        (Scope::Global, Action::Allow)
    );
    assert!(global.rules.is_empty());
}

#[test]
fn unsupported_policy_fields_are_refused_by_name() {
    let extension = || istio_extension();
    let cases: Vec<Change<security::Authorization>> = vec![
        (
            "Authorization.extensions",
            Box::new(move |p| p.extensions = vec![extension()]),
        ),
        (
            "Match.extensions",
            Box::new(move |p| p.rules[0].clauses[0].matches[0].extensions = vec![extension()]),
        ),
        ("Authorization.scope", Box::new(|p| p.scope = 5)),
        ("Authorization.action", Box::new(|p| p.action = 5)),
        (
            "Match.namespaces",
            Box::new(|p| {
                p.rules[0].clauses[0].matches[0].namespaces = vec![security::StringMatch::default()]
            }),
        ),
        (
            "Match.source_ips",
            Box::new(|p| p.rules[0].clauses[0].matches[0].source_ips[0].length = 33),
        ),
        (
            "Match.destination_ips",
            Box::new(|p| p.rules[0].clauses[0].matches[0].destination_ips[0].address = vec![1; 3]),
        ),
        (
            "Match.destination_ports",
            Box::new(|p| p.rules[0].clauses[0].matches[0].destination_ports = vec![70_000]),
        ),
    ];
    for (field, change) in cases {
        let mut found = full_policy();
        change(&mut found);
        let refused = refused_field(authorization(found));
        println!("{field}: refused as {refused}");
        assert_eq!(refused, field);
    }
}

fn istio_extension() -> pb::Extension {
    pb::Extension {
        name: "vendor.example/extra".into(),
        config: None,
    }
}
