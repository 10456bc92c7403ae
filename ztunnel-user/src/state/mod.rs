//! The workload, service and policy store built from the configuration file.
//!
//! A [`State`] is immutable; a reload builds a new one and swaps it into the [`StateHandle`]
//! every part of the proxy holds, so a connection sees one consistent configuration.
//! Addresses are looked up without their network: this node proxy serves one network.

pub mod address;
pub mod balancer;
pub mod compat;
pub mod service;
pub mod workload;

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use arc_swap::ArcSwap;

pub use address::{
    AddressError, GatewayAddress, GatewayDestination, NamespacedHostname, NetworkAddress,
};
pub use balancer::EndpointBalancer;
pub use service::{Endpoint, Service};
pub use workload::{HealthStatus, Protocol, Workload};

use crate::{
    authz::{Policy, Scope},
    config::LocalConfig,
    identity::{SpiffeId, spiffe::DEFAULT_TRUST_DOMAIN},
};

/// Why a configuration cannot become the state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    /// Two workloads share a uid.
    #[error("workload uid {uid:?} is used twice (uids must be unique)")]
    DuplicateWorkloadUid {
        /// The uid.
        uid: String,
    },
    /// Two workloads share an IP.
    #[error("workload IP {ip} belongs to both {first} and {second} (an IP names one workload)")]
    DuplicateWorkloadIp {
        /// The IP.
        ip: IpAddr,
        /// `namespace/name` of the first.
        first: String,
        /// `namespace/name` of the second.
        second: String,
    },
    /// Two services share a `namespace/hostname`.
    #[error("service {key} is defined twice")]
    DuplicateService {
        /// `namespace/hostname`.
        key: String,
    },
    /// Two services share a VIP.
    #[error("VIP {vip} belongs to both services {first} and {second}")]
    DuplicateVip {
        /// The VIP.
        vip: IpAddr,
        /// The first service.
        first: String,
        /// The second service.
        second: String,
    },
    /// A policy that is not global has no namespace.
    #[error("policy {name:?} has scope {scope:?} but no namespace")]
    PolicyWithoutNamespace {
        /// The policy name.
        name: String,
        /// Its scope.
        scope: Scope,
    },
    /// Two policies share a `namespace/name`.
    #[error("policy {key} is defined twice")]
    DuplicatePolicy {
        /// `namespace/name`.
        key: String,
    },
}

/// The index key of global policies (no namespace is empty).
const GLOBAL_POLICIES: &str = "";

/// One endpoint chosen for a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickedEndpoint {
    /// The workload behind the address.
    pub workload: Arc<Workload>,
    /// Where to connect: an IP of the workload and the target port.
    pub address: SocketAddr,
}

/// One consistent view of the configuration.
#[derive(Debug, Default)]
pub struct State {
    workloads: BTreeMap<String, Arc<Workload>>,
    workloads_by_ip: HashMap<IpAddr, Arc<Workload>>,
    services: BTreeMap<String, Arc<Service>>,
    services_by_vip: HashMap<IpAddr, Arc<Service>>,
    policies: BTreeMap<String, Arc<Policy>>,
    /// Global policies under [`GLOBAL_POLICIES`], namespace-scoped ones under their namespace.
    policies_by_namespace: HashMap<String, Vec<Arc<Policy>>>,
    balancer: Arc<EndpointBalancer>,
}

/// The key a workload is stored under: its uid, or `namespace/name` when it has none.
fn workload_key(workload: &Workload) -> String {
    if workload.uid.is_empty() {
        workload.key()
    } else {
        workload.uid.clone()
    }
}

impl State {
    /// Builds the store from a parsed configuration file, checking that names and addresses are
    /// unique. References to things the file does not define are logged, not refused, as Istio
    /// does: they are normal while a control plane is mid-update.
    pub fn from_config(config: LocalConfig) -> Result<Self, StateError> {
        let mut state = Self::default();
        for workload in config.workloads {
            state.insert_workload(workload)?;
        }
        for service in config.services {
            state.insert_service(service)?;
        }
        state.add_endpoints_named_by_workloads();
        for policy in config.policies {
            state.insert_policy(policy)?;
        }
        state.warn_about_dangling_references();
        Ok(state)
    }

    fn insert_workload(&mut self, mut workload: Workload) -> Result<(), StateError> {
        // An explicitly empty value means the same as a missing one.
        if workload.trust_domain.is_empty() {
            workload.trust_domain = DEFAULT_TRUST_DOMAIN.to_owned();
        }
        if workload.service_account.is_empty() {
            workload.service_account = workload::DEFAULT_SERVICE_ACCOUNT.to_owned();
        }
        let workload = Arc::new(workload);
        let key = workload_key(&workload);
        if self
            .workloads
            .insert(key.clone(), workload.clone())
            .is_some()
        {
            return Err(StateError::DuplicateWorkloadUid { uid: key });
        }
        for ip in &workload.workload_ips {
            if let Some(first) = self.workloads_by_ip.insert(*ip, workload.clone()) {
                return Err(StateError::DuplicateWorkloadIp {
                    ip: *ip,
                    first: first.key(),
                    second: workload.key(),
                });
            }
        }
        Ok(())
    }

    fn insert_policy(&mut self, policy: Policy) -> Result<(), StateError> {
        if policy.namespace.is_empty() && policy.scope != Scope::Global {
            return Err(StateError::PolicyWithoutNamespace {
                name: policy.name,
                scope: policy.scope,
            });
        }
        let policy = Arc::new(policy);
        let key = policy.key();
        if self.policies.insert(key.clone(), policy.clone()).is_some() {
            return Err(StateError::DuplicatePolicy { key });
        }
        let index = match policy.scope {
            Scope::Global => GLOBAL_POLICIES,
            Scope::Namespace => policy.namespace.as_str(),
            Scope::WorkloadSelector => return Ok(()),
        };
        self.policies_by_namespace
            .entry(index.to_owned())
            .or_default()
            .push(policy);
        Ok(())
    }

    fn insert_service(&mut self, service: Service) -> Result<(), StateError> {
        let service = Arc::new(service);
        let key = service.key();
        if self.services.insert(key.clone(), service.clone()).is_some() {
            return Err(StateError::DuplicateService { key });
        }
        for vip in &service.vips {
            if let Some(first) = self.services_by_vip.insert(vip.address, service.clone()) {
                return Err(StateError::DuplicateVip {
                    vip: vip.address,
                    first: first.key(),
                    second: key,
                });
            }
        }
        Ok(())
    }

    /// Adds to each service the endpoints that workloads declare through their `services` map.
    fn add_endpoints_named_by_workloads(&mut self) {
        let mut additions: BTreeMap<String, Vec<(String, Endpoint)>> = BTreeMap::new();
        for (uid, workload) in &self.workloads {
            for (service_key, ports) in &workload.services {
                let endpoint = Endpoint {
                    workload_uid: uid.clone(),
                    port: ports.clone(),
                    status: workload.status,
                };
                additions
                    .entry(service_key.clone())
                    .or_default()
                    .push((uid.clone(), endpoint));
            }
        }
        for (service_key, endpoints) in additions {
            let Some(service) = self.services.get_mut(&service_key) else {
                tracing::warn!(service = %service_key, "workloads name a service the file does not define; ignoring");
                continue;
            };
            let service = Arc::make_mut(service);
            service.endpoints.extend(endpoints);
        }
        // The VIP index must point at the completed services.
        for service in self.services.values() {
            for vip in &service.vips {
                self.services_by_vip.insert(vip.address, service.clone());
            }
        }
    }

    fn warn_about_dangling_references(&self) {
        for service in self.services.values() {
            for uid in service
                .endpoints
                .keys()
                .filter(|uid| !self.workloads.contains_key(*uid))
            {
                tracing::warn!(service = %service.key(), workload_uid = %uid, "endpoint names an unknown workload; it will not be picked");
            }
        }
        for workload in self.workloads.values() {
            for policy in workload
                .authorization_policies
                .iter()
                .filter(|key| !self.policies.contains_key(*key))
            {
                tracing::warn!(workload = %workload.key(), %policy, "workload names an unknown policy; ignoring it");
            }
        }
        let waypoints = self
            .workloads
            .values()
            .filter_map(|workload| {
                Some((
                    format!("workload {}", workload.key()),
                    workload.waypoint.as_ref()?,
                ))
            })
            .chain(self.services.values().filter_map(|service| {
                Some((
                    format!("service {}", service.key()),
                    service.waypoint.as_ref()?,
                ))
            }));
        for (named_by, waypoint) in waypoints {
            if !self.waypoint_defined(waypoint) {
                tracing::warn!(%named_by, waypoint = %waypoint.destination,
                    "names a waypoint the file does not define (no service or workload there); connections that must go through it are refused until it is defined");
            }
        }
    }

    /// Whether `waypoint` names a workload address, a service VIP or a service hostname that
    /// this state holds.
    fn waypoint_defined(&self, waypoint: &GatewayAddress) -> bool {
        match &waypoint.destination {
            GatewayDestination::Address(address) => {
                self.workloads_by_ip.contains_key(&address.address)
                    || self.services_by_vip.contains_key(&address.address)
            }
            GatewayDestination::Hostname(name) => self
                .service_by_hostname(&name.namespace, &name.hostname)
                .is_some(),
        }
    }

    /// The workload that owns `ip`.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<Arc<Workload>> {
        self.workloads_by_ip.get(&ip).cloned()
    }

    /// The workload with this uid (or `namespace/name` when it has no uid).
    pub fn workload_by_uid(&self, uid: &str) -> Option<Arc<Workload>> {
        self.workloads.get(uid).cloned()
    }

    /// The service whose VIP is `vip.ip()` and that exposes `vip.port()`.
    pub fn service_by_vip(&self, vip: SocketAddr) -> Option<Arc<Service>> {
        self.services_by_vip
            .get(&vip.ip())
            .filter(|service| service.ports.contains_key(&vip.port()))
            .cloned()
    }

    /// The service named `namespace/hostname`.
    pub fn service_by_hostname(&self, namespace: &str, hostname: &str) -> Option<Arc<Service>> {
        self.services
            .get(&format!("{namespace}/{hostname}"))
            .cloned()
    }

    /// All workloads, in uid order.
    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.values()
    }

    /// All services, in `namespace/hostname` order.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// All policies, in `namespace/name` order.
    pub fn policies(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.policies.values()
    }

    /// The policies that apply to `workload`: global ones, those of its namespace and the ones
    /// it names in `authorizationPolicies` (as Istio does, whatever their scope; each once).
    pub fn policies_for<'a>(
        &'a self,
        workload: &'a Workload,
    ) -> impl Iterator<Item = &'a Policy> + 'a {
        let scoped = |namespace: &str| {
            self.policies_by_namespace
                .get(namespace)
                .into_iter()
                .flatten()
        };
        let own_namespace = (!workload.namespace.is_empty())
            .then(|| scoped(&workload.namespace))
            .into_iter()
            .flatten();
        let named = workload
            .authorization_policies
            .iter()
            .filter_map(|key| self.policies.get(key))
            .filter(|policy| match policy.scope {
                Scope::Global => false,
                Scope::Namespace => policy.namespace != workload.namespace,
                Scope::WorkloadSelector => true,
            });
        scoped(GLOBAL_POLICIES)
            .chain(own_namespace)
            .chain(named)
            .map(Arc::as_ref)
    }

    /// One healthy endpoint of `service` for `service_port`, round robin, skipping endpoints
    /// that refused recently. `None` if the service has no usable endpoint for that port.
    pub fn pick_endpoint(&self, service: &Service, service_port: u16) -> Option<PickedEndpoint> {
        let rotation = format!("{}:{service_port}", service.key());
        self.pick_from(service, &rotation, None, |endpoint| {
            service.target_port(endpoint, service_port)
        })
    }

    /// Like [`State::pick_endpoint`] for a client that dialled `vip`: a dual-stack endpoint is
    /// dialled at its address of the VIP's family (an endpoint without one, at its first).
    pub fn pick_endpoint_for_vip(
        &self,
        service: &Service,
        vip: SocketAddr,
    ) -> Option<PickedEndpoint> {
        let service_port = vip.port();
        let rotation = format!("{}:{service_port}", service.key());
        self.pick_from(service, &rotation, Some(vip.ip()), |endpoint| {
            service.target_port(endpoint, service_port)
        })
    }

    /// Where to send traffic that must go through `waypoint`: the waypoint workload itself, or
    /// one of the replicas behind the waypoint service (balanced like any service).
    pub fn resolve_waypoint(&self, waypoint: &GatewayAddress) -> Option<PickedEndpoint> {
        let port = waypoint.hbone_mtls_port;
        match &waypoint.destination {
            GatewayDestination::Address(address) => {
                if let Some(workload) = self.workload_by_ip(address.address) {
                    return Some(PickedEndpoint {
                        workload,
                        address: SocketAddr::new(address.address, port),
                    });
                }
                let service = self.services_by_vip.get(&address.address)?;
                self.pick_from(
                    service,
                    &format!("waypoint:{}", service.key()),
                    None,
                    |_| Some(port),
                )
            }
            GatewayDestination::Hostname(name) => {
                let service = self.service_by_hostname(&name.namespace, &name.hostname)?;
                self.pick_from(
                    &service,
                    &format!("waypoint:{}", service.key()),
                    None,
                    |_| Some(port),
                )
            }
        }
    }

    /// The identities of every replica behind `waypoint`, whatever their health (a replica
    /// going away still finishes its connections). Empty when the waypoint is unknown.
    pub fn waypoint_identities(&self, waypoint: &GatewayAddress) -> Vec<SpiffeId> {
        let service = match &waypoint.destination {
            GatewayDestination::Address(address) => {
                if let Some(workload) = self.workload_by_ip(address.address) {
                    return vec![workload.identity()];
                }
                self.services_by_vip.get(&address.address).cloned()
            }
            GatewayDestination::Hostname(name) => {
                self.service_by_hostname(&name.namespace, &name.hostname)
            }
        };
        let mut identities: Vec<SpiffeId> = service
            .iter()
            .flat_map(|service| service.endpoints.values())
            .filter_map(|endpoint| self.workloads.get(&endpoint.workload_uid))
            .map(|workload| workload.identity())
            .collect();
        identities.sort();
        identities.dedup();
        identities
    }

    /// Records that `address` refused a connection, so that picks skip it for a while.
    pub fn mark_refused(&self, address: SocketAddr) {
        self.balancer.mark_refused(address);
    }

    fn pick_from(
        &self,
        service: &Service,
        rotation: &str,
        family_of: Option<IpAddr>,
        port_of: impl Fn(&Endpoint) -> Option<u16>,
    ) -> Option<PickedEndpoint> {
        let candidates: Vec<PickedEndpoint> = service
            .endpoints
            .values()
            .filter(|endpoint| endpoint.status == HealthStatus::Healthy)
            .filter_map(|endpoint| {
                let workload = self.workloads.get(&endpoint.workload_uid)?;
                let ip = family_of
                    .and_then(|vip| {
                        workload
                            .workload_ips
                            .iter()
                            .find(|ip| ip.is_ipv4() == vip.is_ipv4())
                    })
                    .or_else(|| workload.workload_ips.first())
                    .copied()?;
                let port = port_of(endpoint)?;
                (workload.status == HealthStatus::Healthy).then(|| PickedEndpoint {
                    workload: workload.clone(),
                    address: SocketAddr::new(ip, port),
                })
            })
            .collect();
        let addresses: Vec<SocketAddr> = candidates.iter().map(|picked| picked.address).collect();
        let index = self.balancer.pick(rotation, &addresses)?;
        candidates.into_iter().nth(index)
    }
}

/// The current state, shared by every task; cheap to clone.
#[derive(Debug, Clone)]
pub struct StateHandle {
    current: Arc<ArcSwap<State>>,
    balancer: Arc<EndpointBalancer>,
    /// How many times the state was replaced: what [`StateHandle::changes`] watches.
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for StateHandle {
    fn default() -> Self {
        Self::new(State::default())
    }
}

impl StateHandle {
    /// A handle serving `state` until the first [`StateHandle::replace`].
    pub fn new(state: State) -> Self {
        let balancer = state.balancer.clone();
        Self {
            current: Arc::new(ArcSwap::from_pointee(state)),
            balancer,
            generation: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// Wakes after every [`replace`](Self::replace) (the value counts replacements), so that
    /// whoever acts on open connections (see `proxy::connections`) re-checks them.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The state in force now; hold it for the duration of one decision, not longer.
    pub fn snapshot(&self) -> Arc<State> {
        self.current.load_full()
    }

    /// Puts `state` in force. Endpoint rotation and refusal marks carry over.
    pub fn replace(&self, mut state: State) {
        state.balancer = self.balancer.clone();
        self.current.store(Arc::new(state));
        self.generation.send_modify(|generation| *generation += 1);
    }

    /// Records that `address` refused a connection (see [`State::mark_refused`]).
    pub fn mark_refused(&self, address: SocketAddr) {
        self.balancer.mark_refused(address);
    }
}

#[cfg(test)]
mod tests;
