//! The daemon's [`Directory`]: the workload/service store and L4 authorization. Every call
//! reads the current snapshot, so a configuration reload applies to the next connection.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use ztunnel_common::constants::HBONE_PORT;

use super::{Directory, InboundConnection, OutboundRoute, WorkloadInfo};
use crate::{
    authz::{Authorizer, ConnectionAttributes},
    hbone::baggage::Baggage,
    identity::SpiffeId,
    state::{GatewayAddress, Protocol, Service, State, StateHandle, Workload},
};

/// A [`Directory`] over the store and the authorizer.
#[derive(Clone)]
pub struct StateDirectory {
    state: StateHandle,
    authorizer: Authorizer,
}

impl StateDirectory {
    /// Reads `state` for routing and `authorizer` for policy.
    pub fn new(state: StateHandle) -> Self {
        Self {
            authorizer: Authorizer::new(state.clone()),
            state,
        }
    }
}

/// The proxy's view of a configured workload.
pub fn workload_info(workload: &Workload) -> WorkloadInfo {
    WorkloadInfo {
        uid: workload.uid.clone(),
        name: workload.name.clone(),
        namespace: workload.namespace.clone(),
        identity: workload.identity(),
        ips: workload.workload_ips.clone(),
    }
}

impl Directory for StateDirectory {
    fn route_outbound(
        &self,
        _source: &WorkloadInfo,
        original_destination: SocketAddr,
    ) -> OutboundRoute {
        let state = self.state.snapshot();
        if let Some(service) = state.service_by_vip(original_destination) {
            if let Some(waypoint) = &service.waypoint {
                return via_waypoint(&state, waypoint, original_destination);
            }
            return to_service_endpoint(&state, &service, original_destination);
        }
        match state.workload_by_ip(original_destination.ip()) {
            Some(workload) => match &workload.waypoint {
                Some(waypoint) => via_waypoint(&state, waypoint, original_destination),
                None => to_workload(&workload, original_destination, vec![workload.identity()]),
            },
            None => OutboundRoute::Passthrough {
                address: original_destination,
            },
        }
    }

    fn workload(&self, ip: IpAddr) -> Option<WorkloadInfo> {
        self.state
            .snapshot()
            .workload_by_ip(ip)
            .map(|workload| workload_info(&workload))
    }

    fn authorize(&self, connection: &InboundConnection<'_>) -> bool {
        let listed = self
            .state
            .snapshot()
            .workload_by_ip(connection.destination.ip());
        let info = connection.destination_workload;
        let destination_workload = match listed {
            Some(workload) => workload,
            // An enrolled pod missing from the config: policies by namespace or global scope
            // still decide; without an applicable ALLOW policy it is allowed, as Istio does.
            None => {
                match Workload::unlisted(&info.name, &info.namespace, &info.identity, &info.ips) {
                    Ok(workload) => Arc::new(workload),
                    Err(error) => {
                        tracing::warn!(%error, workload = %info.identity, "cannot describe an unlisted workload for policy; denying");
                        return false;
                    }
                }
            }
        };
        self.authorizer
            .evaluate(&ConnectionAttributes {
                source_identity: connection.source_identity.cloned(),
                source: connection.source,
                destination_workload,
                destination: connection.destination,
            })
            .is_allowed()
    }

    fn baggage(&self, ip: IpAddr) -> Option<String> {
        let workload = self.state.snapshot().workload_by_ip(ip)?;
        let value = workload_baggage(&workload).header_value(&workload.workload_type);
        (!value.is_empty()).then_some(value)
    }

    fn report_refused(&self, address: SocketAddr) {
        self.state.mark_refused(address);
    }

    fn route_from_waypoint(&self, original_destination: SocketAddr) -> OutboundRoute {
        let state = self.state.snapshot();
        if let Some(service) = state.service_by_vip(original_destination) {
            return to_service_endpoint(&state, &service, original_destination);
        }
        match state.workload_by_ip(original_destination.ip()) {
            Some(workload) => {
                to_workload(&workload, original_destination, vec![workload.identity()])
            }
            None => OutboundRoute::Refuse {
                reason: format!(
                    "{original_destination} is not a workload or service of the mesh config"
                ),
            },
        }
    }

    fn waypoint_identities(&self, ip: IpAddr) -> Option<Vec<SpiffeId>> {
        let state = self.state.snapshot();
        let workload = state.workload_by_ip(ip)?;
        let waypoint = workload.waypoint.as_ref()?;
        Some(state.waypoint_identities(waypoint))
    }

    fn is_waypoint(&self, identity: &SpiffeId) -> bool {
        let state = self.state.snapshot();
        state
            .workloads()
            .filter_map(|workload| workload.waypoint.clone())
            .chain(
                state
                    .services()
                    .filter_map(|service| service.waypoint.clone()),
            )
            .any(|gateway| state.waypoint_identities(&gateway).contains(identity))
    }
}

/// What a workload's `baggage` header says about it (Istio's ztunnel: cluster, namespace,
/// owning workload, canonical service and revision, region, zone).
pub fn workload_baggage(workload: &Workload) -> Baggage {
    let known = |text: &str| (!text.is_empty()).then(|| text.to_owned());
    Baggage {
        cluster_id: known(&workload.cluster_id),
        namespace: known(&workload.namespace),
        workload_name: known(if workload.workload_name.is_empty() {
            &workload.name
        } else {
            &workload.workload_name
        }),
        service_name: known(&workload.canonical_name),
        revision: known(&workload.canonical_revision),
        region: known(&workload.locality.region),
        zone: known(&workload.locality.zone),
    }
}

/// One healthy endpoint of `service`; the server may prove the endpoint's identity or one of
/// the service's `subjectAltNames`.
fn to_service_endpoint(
    state: &State,
    service: &Service,
    original_destination: SocketAddr,
) -> OutboundRoute {
    let Some(picked) = state.pick_endpoint_for_vip(service, original_destination) else {
        return OutboundRoute::Refuse {
            reason: format!(
                "service {} has no healthy endpoint for port {}",
                service.hostname,
                original_destination.port()
            ),
        };
    };
    let mut expected = vec![picked.workload.identity()];
    expected.extend(
        service
            .subject_alt_names
            .iter()
            .filter_map(|san| san.parse::<SpiffeId>().ok()),
    );
    to_workload(&picked.workload, picked.address, expected)
}

fn to_workload(
    workload: &Arc<Workload>,
    address: SocketAddr,
    expected: Vec<SpiffeId>,
) -> OutboundRoute {
    match workload.protocol {
        Protocol::Hbone => OutboundRoute::Hbone {
            hbone_address: SocketAddr::new(address.ip(), HBONE_PORT),
            authority: address,
            expected,
        },
        Protocol::Tcp => OutboundRoute::Passthrough { address },
    }
}

fn via_waypoint(
    state: &State,
    waypoint: &GatewayAddress,
    original_destination: SocketAddr,
) -> OutboundRoute {
    match state.resolve_waypoint(waypoint) {
        Some(picked) => OutboundRoute::Hbone {
            hbone_address: picked.address,
            authority: original_destination,
            expected: vec![picked.workload.identity()],
        },
        None => OutboundRoute::Refuse {
            reason: "no healthy waypoint replica".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const MESH: &str = include_str!("../config/testdata/istio-local.yaml");

    fn directory() -> StateDirectory {
        let state = State::from_config(parse(MESH, "test.yaml").unwrap()).unwrap();
        StateDirectory::new(StateHandle::new(state))
    }

    fn address(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn source() -> WorkloadInfo {
        WorkloadInfo::new(
            SpiffeId::new("cluster.local", "ns1", "sleep"),
            "198.18.1.10".parse().unwrap(),
        )
    }

    #[test]
    fn a_client_is_sent_to_the_waypoint_and_the_waypoint_to_the_workload() {
        let directory = directory();
        let waypoint = SpiffeId::new("cluster.local", "ns2", "waypoint");
        let echo = SpiffeId::new("example.org", "ns2", "echo");
        assert_eq!(
            directory.route_outbound(&source(), address("198.18.2.10:8080")),
            OutboundRoute::Hbone {
                hbone_address: address("198.18.2.20:15008"),
                authority: address("198.18.2.10:8080"),
                expected: vec![waypoint],
            }
        );
        assert_eq!(
            directory.route_from_waypoint(address("198.18.2.10:8080")),
            OutboundRoute::Hbone {
                hbone_address: address("198.18.2.10:15008"),
                authority: address("198.18.2.10:8080"),
                expected: vec![echo],
            }
        );
    }

    #[test]
    fn a_waypoint_resolves_service_vips_and_refuses_what_the_mesh_does_not_know() {
        let directory = directory();
        let OutboundRoute::Hbone { authority, .. } =
            directory.route_from_waypoint(address("198.19.0.10:80"))
        else {
            panic!("the echo VIP is not routed to an endpoint");
        };
        assert_eq!(authority.port(), 8080, "the service's target port");
        assert!(matches!(
            directory.route_from_waypoint(address("198.18.99.1:80")),
            OutboundRoute::Refuse { .. }
        ));
    }

    #[test]
    fn only_workloads_with_a_waypoint_name_its_identities() {
        let directory = directory();
        assert_eq!(
            directory.waypoint_identities("198.18.2.10".parse().unwrap()),
            Some(vec![SpiffeId::new("cluster.local", "ns2", "waypoint")])
        );
        assert_eq!(
            directory.waypoint_identities("198.18.2.11".parse().unwrap()),
            None
        );
    }
}
