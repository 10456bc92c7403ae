//! The HBONE proxy behind the in-pod listeners: turns the listener's pod (from `inpod`) into
//! the proxy's pod context — which workload it is, hence which certificate its HBONE listener
//! presents and which identity its outbound tunnels carry — and hands the connection over.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::net::TcpStream;

use crate::{
    identity::{CertificateStore, SpiffeId},
    inpod::handler::{HandlerFuture, PodContext as ListenerPod, PodTrafficHandler},
    proxy::{self, PodContext, ProxyContext, WorkloadInfo, state_directory::workload_info},
    socket::SocketFactory,
    state::StateHandle,
};

/// The service account a pod that is not in the workload config is taken to run as.
const UNLISTED_SERVICE_ACCOUNT: &str = "default";

/// A [`PodTrafficHandler`] that runs the HBONE proxy.
pub struct MeshHandler {
    context: Arc<ProxyContext>,
    state: StateHandle,
    certificates: Arc<CertificateStore>,
    pods: Mutex<HashMap<u64, Arc<PodContext>>>,
}

impl MeshHandler {
    /// A handler proxying with `context`, naming pods from `state`.
    pub fn new(
        context: Arc<ProxyContext>,
        state: StateHandle,
        certificates: Arc<CertificateStore>,
    ) -> Self {
        Self {
            context,
            state,
            certificates,
            pods: Mutex::default(),
        }
    }

    /// Who the pod is according to the current config; a pod missing from it keeps its
    /// namespace and runs as the namespace's default service account.
    fn workload(&self, pod: &ListenerPod) -> WorkloadInfo {
        let state = self.state.snapshot();
        if let Some(workload) = pod.ips.iter().find_map(|ip| state.workload_by_ip(*ip)) {
            return workload_info(&workload);
        }
        let identity = SpiffeId::new(
            self.certificates.trust_domain(),
            &pod.namespace,
            UNLISTED_SERVICE_ACCOUNT,
        );
        let mut info = WorkloadInfo::new(
            identity,
            pod.ips
                .first()
                .copied()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
        );
        info.name = pod.name.clone();
        info.namespace = pod.namespace.clone();
        info.ips = pod.ips.clone();
        info
    }

    /// The proxy's context for `pod`, rebuilt when the pod's identity changed with the config.
    fn pod_context(&self, pod: &ListenerPod) -> Option<Arc<PodContext>> {
        let workload = self.workload(pod);
        let mut pods = self
            .pods
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(known) = pods.get(&pod.netns_cookie)
            && known.workload == workload
        {
            return Some(known.clone());
        }
        let sockets: Arc<dyn SocketFactory> = pod.sockets.clone();
        match PodContext::new(workload, sockets, &self.certificates) {
            Ok(context) => {
                pods.insert(pod.netns_cookie, context.clone());
                Some(context)
            }
            Err(error) => {
                tracing::warn!(pod = %pod.name, namespace = %pod.namespace, %error, "no certificate for the pod; refusing its connection");
                None
            }
        }
    }
}

impl PodTrafficHandler for MeshHandler {
    fn outbound(
        &self,
        pod: Arc<ListenerPod>,
        stream: TcpStream,
        original_destination: SocketAddr,
    ) -> HandlerFuture {
        let context = self.context.clone();
        let pod_context = self.pod_context(&pod);
        Box::pin(async move {
            let Some(pod_context) = pod_context else {
                return;
            };
            if let Err(error) =
                proxy::outbound::handle(&context, &pod_context, stream, original_destination).await
            {
                tracing::debug!(pod = %pod.name, destination = %original_destination, %error, "outbound connection failed");
            }
        })
    }

    fn inbound_plaintext(
        &self,
        pod: Arc<ListenerPod>,
        stream: TcpStream,
        _original_destination: SocketAddr,
    ) -> HandlerFuture {
        let context = self.context.clone();
        let pod_context = self.pod_context(&pod);
        Box::pin(async move {
            let Some(pod_context) = pod_context else {
                return;
            };
            if let Err(error) = proxy::passthrough::handle(&context, &pod_context, stream).await {
                tracing::debug!(pod = %pod.name, %error, "inbound plaintext connection failed");
            }
        })
    }

    fn inbound_hbone(&self, pod: Arc<ListenerPod>, stream: TcpStream) -> HandlerFuture {
        let context = self.context.clone();
        let pod_context = self.pod_context(&pod);
        Box::pin(async move {
            let Some(pod_context) = pod_context else {
                return;
            };
            if let Err(error) =
                proxy::inbound::serve_hbone_connection(context, pod_context, stream).await
            {
                tracing::debug!(pod = %pod.name, %error, "inbound HBONE connection failed");
            }
        })
    }
}
