//! One enrolled pod's server: its in-pod listeners and who the pod is, resolved once when the
//! pod is added and again only when the mesh state changed — not per connection.
//!
//! | listener | address (in the pod netns) | accept loop |
//! |---|---|---|
//! | outbound | 127.0.0.1:15001, [::1]:15001 | [`listeners::serve_outbound`] (`SO_ORIGINAL_DST`) |
//! | inbound plaintext | 0.0.0.0:15006, [::]:15006, `IP_TRANSPARENT` | [`listeners::serve_passthrough`] |
//! | HBONE | each pod IP :15008 | [`listeners::serve_inbound_hbone`] |
//!
//! Dropping the server closes them all; the kernel then sees no listener and applies the node's
//! fail mode to the pod — unless another proxy's listeners share the ports (an upgrade): every
//! listener is `SO_REUSEPORT`, and `tcp_migrate_req` is on in the pod, so the closing listener's
//! queued connections move to the other proxy's.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use tokio::{net::TcpListener, task::JoinSet};
use ztunnel_common::constants::{HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};

use super::{
    InpodError,
    netns::Netns,
    socket_factory::{PodSocketFactory, enable_request_migration, listen_in},
};
use crate::{
    identity::{CertificateStore, SpiffeId},
    proxy::{
        PodContext, ProxyContext, WorkloadInfo,
        listeners::{self, PodSource, SocketOriginalDestination},
        state_directory::workload_info,
    },
    socket::SocketFactory,
    state::{State, StateHandle, workload::DEFAULT_SERVICE_ACCOUNT},
};

/// Who the agent says a pod is (ZDS `WorkloadInfo`), and what its netns shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    /// The pod's uid.
    pub uid: String,
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Its service account, if the agent knew it.
    pub service_account: Option<String>,
    /// The addresses of its interfaces.
    pub ips: Vec<IpAddr>,
    /// The cookie of its netns.
    pub netns_cookie: u64,
}

/// What every pod server shares: the proxy, the mesh state and the certificates.
#[derive(Clone)]
pub struct ServerContext {
    /// The proxy.
    pub proxy: Arc<ProxyContext>,
    /// The mesh state, for who a pod is.
    pub state: StateHandle,
    /// Workload certificates.
    pub certificates: Arc<CertificateStore>,
}

/// A served pod; dropping it closes its listeners (connections already accepted go on).
pub struct PodServer {
    identity: PodIdentity,
    _accept_loops: JoinSet<()>,
}

impl PodServer {
    /// Opens every listener of the pod in `netns` and starts accepting. IPv6 loopback and
    /// wildcard listeners that cannot be opened (IPv6 off in the pod) are skipped with a warning;
    /// any other failure is an error and nothing stays open.
    pub fn open(
        context: &ServerContext,
        identity: PodIdentity,
        netns: Arc<Netns>,
    ) -> Result<Self, InpodError> {
        let sockets = Arc::new(PodSocketFactory::new(netns.clone()));
        let resolver = Arc::new(Resolver {
            context: context.clone(),
            identity: identity.clone(),
            sockets,
            resolved: Mutex::new(None),
        });
        // Resolve now: a pod whose certificate cannot be had is refused at once, not per
        // connection.
        if resolver.clone().current().is_none() {
            return Err(InpodError::Invalid(format!(
                "no certificate for pod {}/{} (see the warning above)",
                identity.namespace, identity.name
            )));
        }
        if let Err(error) = enable_request_migration(&netns) {
            tracing::warn!(pod = %identity.name, namespace = %identity.namespace, %error, "cannot set net.ipv4.tcp_migrate_req in the pod (kernel < 5.14?); an upgrade may reset connections queued on the old proxy's listeners");
        }
        let mut accept_loops = JoinSet::new();
        for (address, role) in wanted_listeners(&identity.ips) {
            let transparent = role == Role::InboundPlaintext;
            let listener = match listen_in(&netns, address, transparent)
                .and_then(TcpListener::from_std)
            {
                Ok(listener) => listener,
                // A listener on one of the pod's own IPs is not optional.
                Err(error) if address.is_ipv6() && role != Role::Hbone => {
                    tracing::warn!(pod = %identity.name, namespace = %identity.namespace, %address, %error, "IPv6 listener unavailable in pod; IPv6 capture off for it");
                    continue;
                }
                Err(source) => {
                    return Err(InpodError::Listen {
                        pod: format!("{}/{}", identity.namespace, identity.name),
                        address,
                        source,
                    });
                }
            };
            let proxy = context.proxy.clone();
            let pod: Arc<dyn PodSource> = resolver.clone();
            match role {
                Role::Outbound => accept_loops.spawn(listeners::serve_outbound(
                    proxy,
                    pod,
                    listener,
                    Arc::new(SocketOriginalDestination),
                )),
                Role::InboundPlaintext => {
                    accept_loops.spawn(listeners::serve_passthrough(proxy, pod, listener))
                }
                Role::Hbone => {
                    accept_loops.spawn(listeners::serve_inbound_hbone(proxy, pod, listener))
                }
            };
        }
        tracing::info!(pod = %identity.name, namespace = %identity.namespace, uid = %identity.uid, ips = ?identity.ips, netns_cookie = identity.netns_cookie, "serving pod: in-pod listeners open");
        Ok(Self {
            identity,
            _accept_loops: accept_loops,
        })
    }

    /// Who the pod is.
    pub fn identity(&self) -> &PodIdentity {
        &self.identity
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Outbound,
    InboundPlaintext,
    Hbone,
}

fn wanted_listeners(ips: &[IpAddr]) -> Vec<(SocketAddr, Role)> {
    let mut wanted = vec![
        ((Ipv4Addr::LOCALHOST, OUTBOUND_PORT).into(), Role::Outbound),
        ((Ipv6Addr::LOCALHOST, OUTBOUND_PORT).into(), Role::Outbound),
        (
            (Ipv4Addr::UNSPECIFIED, INBOUND_PLAINTEXT_PORT).into(),
            Role::InboundPlaintext,
        ),
        (
            (Ipv6Addr::UNSPECIFIED, INBOUND_PLAINTEXT_PORT).into(),
            Role::InboundPlaintext,
        ),
    ];
    wanted.extend(
        ips.iter()
            .map(|ip| (SocketAddr::new(*ip, HBONE_PORT), Role::Hbone)),
    );
    wanted
}

/// The pod's proxy context, re-resolved when the mesh state it was resolved from is replaced.
struct Resolver {
    context: ServerContext,
    identity: PodIdentity,
    sockets: Arc<PodSocketFactory>,
    resolved: Mutex<Option<(Arc<State>, Arc<PodContext>)>>,
}

impl PodSource for Resolver {
    fn current(self: Arc<Self>) -> Option<Arc<PodContext>> {
        let state = self.context.state.snapshot();
        let mut resolved = self
            .resolved
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((resolved_from, pod)) = resolved.as_ref()
            && Arc::ptr_eq(resolved_from, &state)
        {
            return Some(pod.clone());
        }
        let workload = self.workload(&state);
        // The state changed but the pod did not: keep the context (and its TLS acceptor).
        if let Some((_, pod)) = resolved.as_ref()
            && pod.workload == workload
        {
            let pod = pod.clone();
            *resolved = Some((state, pod.clone()));
            return Some(pod);
        }
        let sockets: Arc<dyn SocketFactory> = self.sockets.clone();
        match PodContext::new(workload, sockets, &self.context.certificates) {
            Ok(pod) => {
                *resolved = Some((state, pod.clone()));
                Some(pod)
            }
            Err(error) => {
                tracing::warn!(pod = %self.identity.name, namespace = %self.identity.namespace, %error, "no certificate for the pod; refusing its connection");
                None
            }
        }
    }
}

impl Resolver {
    /// Who the pod is in the mesh state (by address), else who the agent said it is; a pod
    /// known to neither runs as its namespace's default service account.
    fn workload(&self, state: &State) -> WorkloadInfo {
        let pod = &self.identity;
        if let Some(workload) = pod.ips.iter().find_map(|ip| state.workload_by_ip(*ip)) {
            return workload_info(&workload);
        }
        let service_account = pod
            .service_account
            .as_deref()
            .unwrap_or(DEFAULT_SERVICE_ACCOUNT);
        let identity = SpiffeId::new(
            self.context.certificates.trust_domain(),
            &pod.namespace,
            service_account,
        );
        let mut info = WorkloadInfo::new(
            identity,
            pod.ips
                .first()
                .copied()
                .unwrap_or(Ipv4Addr::UNSPECIFIED.into()),
        );
        info.uid = pod.uid.clone();
        info.name = pod.name.clone();
        info.namespace = pod.namespace.clone();
        info.ips = pod.ips.clone();
        info
    }
}
