//! The HBONE proxy behind the in-pod listeners: turns the listener's pod (from `inpod`) into
//! the proxy's pod context — which workload it is, hence which certificate its HBONE listener
//! presents and which identity its outbound tunnels carry — and hands the connection over.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::net::TcpStream;

use crate::{
    identity::{CertificateStore, SpiffeId},
    inpod::handler::{HandlerFuture, PodContext as ListenerPod, PodTrafficHandler},
    proxy::{self, PodContext, ProxyContext, WorkloadInfo, state_directory::workload_info},
    socket::SocketFactory,
    state::{StateHandle, workload::DEFAULT_SERVICE_ACCOUNT},
};

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
            DEFAULT_SERVICE_ACCOUNT,
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

impl MeshHandler {
    /// The future a listener spawns: resolve the pod's proxy context, then run `work` with it;
    /// a failure is logged as `what` (the access log already has one line per connection).
    fn serve<F, Fut, E>(&self, pod: Arc<ListenerPod>, what: &'static str, work: F) -> HandlerFuture
    where
        F: FnOnce(Arc<ProxyContext>, Arc<PodContext>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let context = self.context.clone();
        let pod_context = self.pod_context(&pod);
        Box::pin(async move {
            let Some(pod_context) = pod_context else {
                return;
            };
            if let Err(error) = work(context, pod_context).await {
                tracing::debug!(pod = %pod.name, namespace = %pod.namespace, %error, "{what} failed");
            }
        })
    }
}

impl PodTrafficHandler for MeshHandler {
    fn outbound(
        &self,
        pod: Arc<ListenerPod>,
        stream: TcpStream,
        original_destination: SocketAddr,
    ) -> HandlerFuture {
        self.serve(pod, "outbound connection", move |context, pod| async move {
            proxy::outbound::handle(&context, &pod, stream, original_destination).await
        })
    }

    fn inbound_plaintext(
        &self,
        pod: Arc<ListenerPod>,
        stream: TcpStream,
        original_destination: SocketAddr,
    ) -> HandlerFuture {
        self.serve(
            pod,
            "inbound plaintext connection",
            move |context, pod| async move {
                proxy::passthrough::handle_to(&context, &pod, stream, original_destination).await
            },
        )
    }

    fn inbound_hbone(&self, pod: Arc<ListenerPod>, stream: TcpStream) -> HandlerFuture {
        self.serve(pod, "inbound HBONE connection", move |context, pod| {
            proxy::inbound::serve_hbone_connection(context, pod, stream)
        })
    }
}
