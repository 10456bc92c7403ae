//! Fixtures in the configuration file's shape (`workloads`, `services`, `policies`) as the
//! resources istiod would push for them: `istio.workload.Address` named by workload uid or
//! `namespace/hostname`, `istio.security.Authorization` named `namespace/name`.
//!
//! A fixture may also list `malformed` resource names: each is pushed as an `Address` whose
//! payload is not valid protobuf, so that a test can watch a NACK while the rest applies.

use std::{
    collections::BTreeMap,
    hash::{DefaultHasher, Hash, Hasher},
    net::IpAddr,
};

use prost::Message;
use serde::Deserialize;
use ztunnel::{
    authz::{self, Action, Policy, Scope, StringMatch},
    proto::istio::{security, workload as pb},
    state::{GatewayAddress, GatewayDestination, HealthStatus, Protocol, Service, Workload},
    xds::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL},
};

/// One fixture file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fixture {
    /// Workloads (the file's shape).
    #[serde(default)]
    pub workloads: Vec<Workload>,
    /// Services; their endpoints come from the workloads' `services`, as in Istio's API.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Policies.
    #[serde(default)]
    pub policies: Vec<Policy>,
    /// Names pushed as undecodable `Address` resources.
    #[serde(default)]
    pub malformed: Vec<String>,
}

/// One resource as pushed: its version (a hash of its bytes) and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// Changes whenever the payload does.
    pub version: String,
    /// The encoded message.
    pub payload: Vec<u8>,
}

/// type URL → resource name → resource.
pub type Snapshot = BTreeMap<String, BTreeMap<String, Pushed>>;

/// Parses fixture YAML into the resources to push.
pub fn snapshot(yaml: &str) -> anyhow::Result<Snapshot> {
    let fixture: Fixture = if yaml.trim().is_empty() {
        Fixture::default()
    } else {
        serde_norway::from_str(yaml)?
    };
    let mut addresses = BTreeMap::new();
    for workload in &fixture.workloads {
        let name = if workload.uid.is_empty() {
            workload.key()
        } else {
            workload.uid.clone()
        };
        let message = pb::Address {
            r#type: Some(pb::address::Type::Workload(workload_message(
                workload, &name,
            ))),
        };
        addresses.insert(name, pushed(message.encode_to_vec()));
    }
    for service in &fixture.services {
        let message = pb::Address {
            r#type: Some(pb::address::Type::Service(service_message(service))),
        };
        addresses.insert(service.key(), pushed(message.encode_to_vec()));
    }
    for name in &fixture.malformed {
        // A length-delimited field 1 claiming more bytes than follow: no decoder accepts it.
        addresses.insert(name.clone(), pushed(vec![0x0a, 0x7f, 0x01]));
    }
    let policies = fixture
        .policies
        .iter()
        .map(|policy| {
            (
                policy.key(),
                pushed(authorization_message(policy).encode_to_vec()),
            )
        })
        .collect();
    Ok(BTreeMap::from([
        (ADDRESS_TYPE_URL.to_owned(), addresses),
        (AUTHORIZATION_TYPE_URL.to_owned(), policies),
    ]))
}

fn pushed(payload: Vec<u8>) -> Pushed {
    let mut hasher = DefaultHasher::new();
    payload.hash(&mut hasher);
    Pushed {
        version: format!("{:016x}", hasher.finish()),
        payload,
    }
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn ports(map: &BTreeMap<u16, u16>) -> Vec<pb::Port> {
    map.iter()
        .map(|(service_port, target_port)| pb::Port {
            service_port: u32::from(*service_port),
            target_port: u32::from(*target_port),
            app_protocol: pb::AppProtocol::Tcp as i32,
        })
        .collect()
}

fn gateway(gateway: &GatewayAddress) -> pb::GatewayAddress {
    let destination = match &gateway.destination {
        GatewayDestination::Address(address) => {
            pb::gateway_address::Destination::Address(pb::NetworkAddress {
                network: address.network.clone(),
                address: ip_bytes(&address.address),
                length: None,
            })
        }
        GatewayDestination::Hostname(name) => {
            pb::gateway_address::Destination::Hostname(pb::NamespacedHostname {
                namespace: name.namespace.clone(),
                hostname: name.hostname.clone(),
            })
        }
    };
    pb::GatewayAddress {
        destination: Some(destination),
        hbone_mtls_port: u32::from(gateway.hbone_mtls_port),
    }
}

fn workload_message(workload: &Workload, uid: &str) -> pb::Workload {
    let workload_type = match workload.workload_type.as_str() {
        "cronjob" => pb::WorkloadType::Cronjob,
        "pod" => pb::WorkloadType::Pod,
        "job" => pb::WorkloadType::Job,
        _ => pb::WorkloadType::Deployment,
    };
    pb::Workload {
        uid: uid.to_owned(),
        name: workload.name.clone(),
        namespace: workload.namespace.clone(),
        addresses: workload.workload_ips.iter().map(ip_bytes).collect(),
        hostname: workload.hostname.clone(),
        network: workload.network.clone(),
        tunnel_protocol: match workload.protocol {
            Protocol::Tcp => pb::TunnelProtocol::None,
            Protocol::Hbone => pb::TunnelProtocol::Hbone,
        } as i32,
        trust_domain: workload.trust_domain.clone(),
        service_account: workload.service_account.clone(),
        waypoint: workload.waypoint.as_ref().map(gateway),
        node: workload.node.clone(),
        canonical_name: workload.canonical_name.clone(),
        canonical_revision: workload.canonical_revision.clone(),
        workload_type: workload_type as i32,
        workload_name: workload.workload_name.clone(),
        services: workload
            .services
            .iter()
            .map(|(service, map)| (service.clone(), pb::PortList { ports: ports(map) }))
            .collect(),
        authorization_policies: workload.authorization_policies.clone(),
        status: match workload.status {
            HealthStatus::Healthy => pb::WorkloadStatus::Healthy,
            HealthStatus::Unhealthy => pb::WorkloadStatus::Unhealthy,
        } as i32,
        cluster_id: workload.cluster_id.clone(),
        locality: Some(pb::Locality {
            region: workload.locality.region.clone(),
            zone: workload.locality.zone.clone(),
            subzone: workload.locality.subzone.clone(),
        }),
        ..pb::Workload::default()
    }
}

fn service_message(service: &Service) -> pb::Service {
    pb::Service {
        name: service.name.clone(),
        namespace: service.namespace.clone(),
        hostname: service.hostname.clone(),
        addresses: service
            .vips
            .iter()
            .map(|vip| pb::NetworkAddress {
                network: vip.network.clone(),
                address: ip_bytes(&vip.address),
                length: None,
            })
            .collect(),
        ports: ports(&service.ports),
        subject_alt_names: service.subject_alt_names.clone(),
        waypoint: service.waypoint.as_ref().map(gateway),
        canonical: service.canonical,
        ..pb::Service::default()
    }
}

fn string_matches(matches: &[StringMatch]) -> Vec<security::StringMatch> {
    use security::string_match::MatchType;
    matches
        .iter()
        .map(|found| security::StringMatch {
            match_type: Some(match found {
                StringMatch::Exact(value) => MatchType::Exact(value.clone()),
                StringMatch::Prefix(value) => MatchType::Prefix(value.clone()),
                StringMatch::Suffix(value) => MatchType::Suffix(value.clone()),
                StringMatch::Presence() => MatchType::Presence(()),
            }),
        })
        .collect()
}

fn ranges(ranges: &[ipnet::IpNet]) -> Vec<security::Address> {
    ranges
        .iter()
        .map(|range| security::Address {
            address: ip_bytes(&range.addr()),
            length: u32::from(range.prefix_len()),
        })
        .collect()
}

fn accounts(matches: &[authz::ServiceAccountMatch]) -> Vec<security::ServiceAccountMatch> {
    matches
        .iter()
        .map(|found| security::ServiceAccountMatch {
            namespace: found.namespace.clone(),
            service_account: found.service_account.clone(),
        })
        .collect()
}

fn authorization_message(policy: &Policy) -> security::Authorization {
    let matches = |found: &authz::Match| security::Match {
        namespaces: string_matches(&found.namespaces),
        not_namespaces: string_matches(&found.not_namespaces),
        principals: string_matches(&found.principals),
        not_principals: string_matches(&found.not_principals),
        source_ips: ranges(&found.source_ips),
        not_source_ips: ranges(&found.not_source_ips),
        destination_ips: ranges(&found.destination_ips),
        not_destination_ips: ranges(&found.not_destination_ips),
        destination_ports: found
            .destination_ports
            .iter()
            .map(|p| u32::from(*p))
            .collect(),
        not_destination_ports: found
            .not_destination_ports
            .iter()
            .map(|p| u32::from(*p))
            .collect(),
        service_accounts: accounts(&found.service_accounts),
        not_service_accounts: accounts(&found.not_service_accounts),
        extensions: Vec::new(),
    };
    security::Authorization {
        name: policy.name.clone(),
        namespace: policy.namespace.clone(),
        scope: match policy.scope {
            Scope::Global => security::Scope::Global,
            Scope::Namespace => security::Scope::Namespace,
            Scope::WorkloadSelector => security::Scope::WorkloadSelector,
        } as i32,
        action: match policy.action {
            Action::Allow => security::Action::Allow,
            Action::Deny => security::Action::Deny,
        } as i32,
        rules: policy
            .rules
            .iter()
            .map(|rule| security::Rule {
                clauses: rule
                    .iter()
                    .map(|clause| security::Clause {
                        matches: clause.iter().map(matches).collect(),
                    })
                    .collect(),
            })
            .collect(),
        dry_run: policy.dry_run,
        extensions: Vec::new(),
    }
}
