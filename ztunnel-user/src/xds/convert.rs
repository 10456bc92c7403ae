//! Istio's xDS resources (`istio.workload.Address`, `istio.security.Authorization`) into the
//! very types the configuration file parses into ([`Workload`], [`Service`], [`Policy`]), so
//! that a state pushed by istiod and a state read from a file are built and used the same way.
//!
//! A field whose value asks for behaviour this proxy does not have is refused with its name
//! (the resource is NACKed), as the file refuses it: a routing or policy field that is silently
//! not honoured would be a correctness or security surprise. Purely informational fields
//! (application protocol, extensions of a workload or service) are ignored; each such place
//! says why.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;

use crate::{
    authz::{self, Action, Policy, Scope, ServiceAccountMatch, StringMatch},
    identity::DEFAULT_TRUST_DOMAIN,
    proto::istio::{security, workload as pb},
    state::{
        GatewayAddress, GatewayDestination, HealthStatus, NamespacedHostname, NetworkAddress,
        Protocol, Service, Workload, compat, workload::DEFAULT_SERVICE_ACCOUNT,
    },
};

/// Why one resource cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// The `Address` resource carries neither a workload nor a service.
    #[error("address resource carries neither a workload nor a service")]
    EmptyAddress,
    /// A field holds a value this proxy does not implement.
    #[error("unsupported value for `{field}`: {detail}")]
    Unsupported {
        /// The protobuf field, e.g. `Workload.tunnel_protocol`.
        field: &'static str,
        /// The value and what to do about it.
        detail: String,
    },
    /// A field holds a value that is malformed.
    #[error("invalid `{field}`: {detail}")]
    Invalid {
        /// The protobuf field.
        field: &'static str,
        /// What is wrong with it.
        detail: String,
    },
}

fn unsupported(field: &'static str, detail: impl Into<String>) -> ConvertError {
    ConvertError::Unsupported {
        field,
        detail: detail.into(),
    }
}

fn invalid(field: &'static str, detail: impl Into<String>) -> ConvertError {
    ConvertError::Invalid {
        field,
        detail: detail.into(),
    }
}

/// What an `Address` resource describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressResource {
    /// A workload (resource name: its uid).
    Workload(Box<Workload>),
    /// A service (resource name: `namespace/hostname`).
    Service(Box<Service>),
}

/// Converts one `istio.workload.Address`.
pub fn address(address: pb::Address) -> Result<AddressResource, ConvertError> {
    match address.r#type {
        Some(pb::address::Type::Workload(found)) => {
            workload(found).map(|converted| AddressResource::Workload(Box::new(converted)))
        }
        Some(pb::address::Type::Service(found)) => {
            service(found).map(|converted| AddressResource::Service(Box::new(converted)))
        }
        None => Err(ConvertError::EmptyAddress),
    }
}

/// Converts one `istio.workload.Workload`.
pub fn workload(workload: pb::Workload) -> Result<Workload, ConvertError> {
    let protocol = match pb::TunnelProtocol::try_from(workload.tunnel_protocol) {
        Ok(pb::TunnelProtocol::None) => Protocol::Tcp,
        Ok(pb::TunnelProtocol::Hbone) => Protocol::Hbone,
        Ok(pb::TunnelProtocol::LegacyIstioMtls) => {
            return Err(unsupported(
                "Workload.tunnel_protocol",
                "LEGACY_ISTIO_MTLS (sidecar mTLS) is not implemented; only NONE and HBONE",
            ));
        }
        Err(_) => {
            return Err(invalid(
                "Workload.tunnel_protocol",
                format!("unknown value {}", workload.tunnel_protocol),
            ));
        }
    };
    if workload.network_gateway.is_some() {
        return Err(unsupported(
            "Workload.network_gateway",
            "multi-network gateways are not implemented",
        ));
    }
    if workload.native_tunnel {
        return Err(unsupported(
            "Workload.native_tunnel",
            "true (the workload would terminate HBONE itself); only false",
        ));
    }
    if let Some(tunnel) = &workload.application_tunnel
        && tunnel.protocol != pb::application_tunnel::Protocol::None as i32
    {
        return Err(unsupported(
            "Workload.application_tunnel",
            format!(
                "protocol {} (PROXY protocol to the application is not implemented)",
                tunnel.protocol
            ),
        ));
    }
    if workload.network_mode != pb::NetworkMode::Standard as i32 {
        return Err(unsupported(
            "Workload.network_mode",
            "HOST_NETWORK (pods sharing the node's network namespace cannot be captured in-pod)",
        ));
    }
    let capacity = workload.capacity.unwrap_or(compat::default_capacity());
    if capacity != compat::default_capacity() {
        return Err(unsupported(
            "Workload.capacity",
            format!("{capacity} (endpoints are not weighted here; only 1)"),
        ));
    }
    // Workload extensions carry vendor data for other proxies; nothing here reads them.
    let status = match pb::WorkloadStatus::try_from(workload.status) {
        Ok(pb::WorkloadStatus::Healthy) => HealthStatus::Healthy,
        Ok(pb::WorkloadStatus::Unhealthy) => HealthStatus::Unhealthy,
        Err(_) => {
            return Err(invalid(
                "Workload.status",
                format!("unknown value {}", workload.status),
            ));
        }
    };
    let workload_type = match pb::WorkloadType::try_from(workload.workload_type) {
        Ok(pb::WorkloadType::Deployment) => "deployment",
        Ok(pb::WorkloadType::Cronjob) => "cronjob",
        Ok(pb::WorkloadType::Pod) => "pod",
        Ok(pb::WorkloadType::Job) => "job",
        Err(_) => {
            return Err(invalid(
                "Workload.workload_type",
                format!("unknown value {}", workload.workload_type),
            ));
        }
    };
    let workload_ips = workload
        .addresses
        .iter()
        .map(|bytes| ip_from_bytes("Workload.addresses", bytes))
        .collect::<Result<Vec<_>, _>>()?;
    let services = workload
        .services
        .into_iter()
        .map(|(service, ports)| Ok((service, port_map("Workload.services", &ports.ports)?)))
        .collect::<Result<BTreeMap<_, _>, ConvertError>>()?;
    let locality = workload.locality.unwrap_or_default();
    Ok(Workload {
        uid: workload.uid,
        name: workload.name,
        namespace: workload.namespace,
        trust_domain: non_empty_or(workload.trust_domain, DEFAULT_TRUST_DOMAIN),
        service_account: non_empty_or(workload.service_account, DEFAULT_SERVICE_ACCOUNT),
        workload_ips,
        protocol,
        node: workload.node,
        network: workload.network,
        waypoint: workload
            .waypoint
            .map(|gateway| gateway_address("Workload.waypoint", gateway))
            .transpose()?,
        workload_name: workload.workload_name,
        workload_type: workload_type.to_owned(),
        canonical_name: workload.canonical_name,
        canonical_revision: workload.canonical_revision,
        hostname: workload.hostname,
        cluster_id: workload.cluster_id,
        authorization_policies: workload.authorization_policies,
        status,
        network_mode: compat::NetworkMode::Standard,
        capacity,
        native_tunnel: false,
        locality: compat::Locality {
            region: locality.region,
            zone: locality.zone,
            subzone: locality.subzone,
        },
        services,
    })
}

/// Converts one `istio.workload.Service`.
pub fn service(service: pb::Service) -> Result<Service, ConvertError> {
    if let Some(balancing) = &service.load_balancing
        && *balancing != pb::LoadBalancing::default()
    {
        return Err(unsupported(
            "Service.load_balancing",
            "locality-aware or failover balancing is not implemented; endpoints are round robin",
        ));
    }
    if !service.weighted_waypoints.is_empty() {
        return Err(unsupported(
            "Service.weighted_waypoints",
            format!(
                "{} entries (only one waypoint per service)",
                service.weighted_waypoints.len()
            ),
        ));
    }
    if service.visibility != pb::service::Visibility::Public as i32 {
        return Err(unsupported(
            "Service.visibility",
            "NAMESPACE (namespace-private services are not implemented); only PUBLIC",
        ));
    }
    // `ip_families` is ignored: an endpoint is always dialled in the family of the VIP the
    // client dialled (docs/architecture.md, "Services"), which is what AUTOMATIC, IPV4_ONLY,
    // IPV6_ONLY and DUAL all come to for a node proxy. `ingress_use_waypoint` concerns ingress
    // gateways, not node proxies; service extensions carry vendor data nothing here reads.
    let vips = service
        .addresses
        .into_iter()
        .map(|address| {
            if address.length.is_some() {
                return Err(unsupported(
                    "Service.addresses",
                    "a CIDR VIP (length set) is not implemented; only single addresses",
                ));
            }
            Ok(NetworkAddress {
                network: address.network,
                address: ip_from_bytes("Service.addresses", &address.address)?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // `app_protocol` is informational for an L4 proxy: every port is forwarded as TCP.
    let ports = port_map("Service.ports", &service.ports)?;
    Ok(Service {
        name: service.name,
        namespace: service.namespace,
        hostname: service.hostname,
        vips,
        ports,
        subject_alt_names: service.subject_alt_names,
        endpoints: BTreeMap::new(),
        waypoint: service
            .waypoint
            .map(|gateway| gateway_address("Service.waypoint", gateway))
            .transpose()?,
        canonical: service.canonical,
        visibility: compat::Visibility::Public,
        cidr_vips: Vec::new(),
        weighted_waypoints: Vec::new(),
    })
}

/// Converts one `istio.security.Authorization`.
pub fn authorization(policy: security::Authorization) -> Result<Policy, ConvertError> {
    let scope = match security::Scope::try_from(policy.scope) {
        Ok(security::Scope::Global) => Scope::Global,
        Ok(security::Scope::Namespace) => Scope::Namespace,
        Ok(security::Scope::WorkloadSelector) => Scope::WorkloadSelector,
        Err(_) => {
            return Err(invalid(
                "Authorization.scope",
                format!("unknown value {}", policy.scope),
            ));
        }
    };
    let action = match security::Action::try_from(policy.action) {
        Ok(security::Action::Allow) => Action::Allow,
        Ok(security::Action::Deny) => Action::Deny,
        Err(_) => {
            return Err(invalid(
                "Authorization.action",
                format!("unknown value {}", policy.action),
            ));
        }
    };
    if !policy.extensions.is_empty() {
        return Err(unsupported(
            "Authorization.extensions",
            "policy extensions are not implemented (a policy must be enforced as written)",
        ));
    }
    let rules = policy
        .rules
        .into_iter()
        .map(|rule| {
            rule.clauses
                .into_iter()
                .map(|clause| clause.matches.into_iter().map(policy_match).collect())
                .collect()
        })
        .collect::<Result<Vec<Vec<Vec<authz::Match>>>, ConvertError>>()?;
    Ok(Policy {
        name: policy.name,
        namespace: policy.namespace,
        scope,
        action,
        rules,
        dry_run: policy.dry_run,
    })
}

fn policy_match(found: security::Match) -> Result<authz::Match, ConvertError> {
    if !found.extensions.is_empty() {
        return Err(unsupported(
            "Match.extensions",
            "match extensions are not implemented (a policy must be enforced as written)",
        ));
    }
    Ok(authz::Match {
        namespaces: string_matches("Match.namespaces", found.namespaces)?,
        not_namespaces: string_matches("Match.not_namespaces", found.not_namespaces)?,
        service_accounts: service_accounts(found.service_accounts),
        not_service_accounts: service_accounts(found.not_service_accounts),
        principals: string_matches("Match.principals", found.principals)?,
        not_principals: string_matches("Match.not_principals", found.not_principals)?,
        source_ips: ranges("Match.source_ips", &found.source_ips)?,
        not_source_ips: ranges("Match.not_source_ips", &found.not_source_ips)?,
        destination_ips: ranges("Match.destination_ips", &found.destination_ips)?,
        not_destination_ips: ranges("Match.not_destination_ips", &found.not_destination_ips)?,
        destination_ports: ports("Match.destination_ports", &found.destination_ports)?,
        not_destination_ports: ports("Match.not_destination_ports", &found.not_destination_ports)?,
    })
}

fn string_matches(
    field: &'static str,
    matches: Vec<security::StringMatch>,
) -> Result<Vec<StringMatch>, ConvertError> {
    use security::string_match::MatchType;
    matches
        .into_iter()
        .map(|found| match found.match_type {
            Some(MatchType::Exact(value)) => Ok(StringMatch::Exact(value)),
            Some(MatchType::Prefix(value)) => Ok(StringMatch::Prefix(value)),
            Some(MatchType::Suffix(value)) => Ok(StringMatch::Suffix(value)),
            Some(MatchType::Presence(_)) => Ok(StringMatch::Presence()),
            None => Err(invalid(
                field,
                "a string match with no exact, prefix, suffix or presence",
            )),
        })
        .collect()
}

fn service_accounts(matches: Vec<security::ServiceAccountMatch>) -> Vec<ServiceAccountMatch> {
    matches
        .into_iter()
        .map(|found| ServiceAccountMatch {
            namespace: found.namespace,
            service_account: found.service_account,
        })
        .collect()
}

fn ranges(
    field: &'static str,
    addresses: &[security::Address],
) -> Result<Vec<IpNet>, ConvertError> {
    addresses
        .iter()
        .map(|range| {
            let ip = ip_from_bytes(field, &range.address)?;
            let length = u8::try_from(range.length)
                .map_err(|_| invalid(field, format!("prefix length {}", range.length)))?;
            IpNet::new(ip, length)
                .map_err(|_| invalid(field, format!("prefix length {length} for {ip}")))
        })
        .collect()
}

fn ports(field: &'static str, ports: &[u32]) -> Result<Vec<u16>, ConvertError> {
    ports.iter().map(|port| port_number(field, *port)).collect()
}

fn port_number(field: &'static str, port: u32) -> Result<u16, ConvertError> {
    u16::try_from(port).map_err(|_| invalid(field, format!("port {port} is above 65535")))
}

/// Service port → target port (0: the same as the service port), as the file writes it.
fn port_map(field: &'static str, ports: &[pb::Port]) -> Result<BTreeMap<u16, u16>, ConvertError> {
    ports
        .iter()
        .map(|port| {
            Ok((
                port_number(field, port.service_port)?,
                port_number(field, port.target_port)?,
            ))
        })
        .collect()
}

fn gateway_address(
    field: &'static str,
    gateway: pb::GatewayAddress,
) -> Result<GatewayAddress, ConvertError> {
    let destination = match gateway.destination {
        Some(pb::gateway_address::Destination::Hostname(name)) => {
            if name.namespace.is_empty() || name.hostname.is_empty() {
                return Err(invalid(
                    field,
                    "a hostname destination needs namespace and hostname",
                ));
            }
            GatewayDestination::Hostname(NamespacedHostname {
                namespace: name.namespace,
                hostname: name.hostname,
            })
        }
        Some(pb::gateway_address::Destination::Address(address)) => {
            GatewayDestination::Address(NetworkAddress {
                network: address.network,
                address: ip_from_bytes(field, &address.address)?,
            })
        }
        None => return Err(invalid(field, "no hostname or address")),
    };
    Ok(GatewayAddress {
        destination,
        hbone_mtls_port: port_number(field, gateway.hbone_mtls_port)?,
    })
}

/// An IP address from its 4 or 16 raw bytes.
pub fn ip_from_bytes(field: &'static str, bytes: &[u8]) -> Result<IpAddr, ConvertError> {
    if let Ok(octets) = <[u8; 4]>::try_from(bytes) {
        Ok(IpAddr::V4(Ipv4Addr::from(octets)))
    } else if let Ok(octets) = <[u8; 16]>::try_from(bytes) {
        Ok(IpAddr::V6(Ipv6Addr::from(octets)))
    } else {
        Err(invalid(
            field,
            format!("{} bytes is not an IP address (4 or 16 bytes)", bytes.len()),
        ))
    }
}

fn non_empty_or(value: String, default: &str) -> String {
    if value.is_empty() {
        default.to_owned()
    } else {
        value
    }
}

#[cfg(test)]
mod tests;
