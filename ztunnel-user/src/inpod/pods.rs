//! The proxy's set of served pods, driven by the capture agent over ZDS ([`crate::zds::client`]):
//! an add opens a [`PodServer`] in the netns the agent sent, a delete closes it, and a snapshot
//! closes every server the agent did not name.

use std::{collections::HashMap, collections::HashSet, os::fd::OwnedFd, path::PathBuf, sync::Arc};

use super::{
    netns::Netns,
    pod_server::{PodIdentity, PodServer, ServerContext},
};
use crate::zds::{client::PodSink, messages::WorkloadInfo};

/// Every pod this proxy serves, by uid.
pub struct PodServers {
    context: ServerContext,
    servers: HashMap<String, PodServer>,
}

impl PodServers {
    /// No pod served yet.
    pub fn new(context: ServerContext) -> Self {
        Self {
            context,
            servers: HashMap::new(),
        }
    }

    /// How many pods are served.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether no pod is served.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Closes every pod's listeners.
    pub fn clear(&mut self) {
        self.servers.clear();
    }
}

/// Reads what the pod's netns says about it: its cookie and its addresses.
fn inspect(uid: String, info: Option<WorkloadInfo>, netns: &Netns) -> Result<PodIdentity, String> {
    let info = info.ok_or_else(|| format!("AddWorkload for {uid} without workload_info"))?;
    if info.name.is_empty() || info.namespace.is_empty() {
        return Err(format!(
            "AddWorkload for {uid} without a pod name and namespace"
        ));
    }
    let netns_cookie = netns
        .cookie()
        .map_err(|error| format!("cannot read the cookie of the pod's netns: {error}"))?;
    let ips = netns
        .addresses()
        .map_err(|error| format!("cannot list the pod's addresses in its netns: {error}"))?;
    if ips.is_empty() {
        return Err(format!(
            "pod {}/{} has no address in its netns yet",
            info.namespace, info.name
        ));
    }
    Ok(PodIdentity {
        uid,
        name: info.name,
        namespace: info.namespace,
        service_account: Some(info.service_account).filter(|account| !account.is_empty()),
        ips,
        netns_cookie,
    })
}

impl PodSink for PodServers {
    async fn add(
        &mut self,
        uid: String,
        info: Option<WorkloadInfo>,
        netns: OwnedFd,
    ) -> Result<(), String> {
        let netns = Arc::new(Netns::from_fd(netns, PathBuf::from(format!("zds:{uid}"))));
        let (identity, netns) = tokio::task::spawn_blocking(move || {
            inspect(uid, info, &netns).map(|identity| (identity, netns))
        })
        .await
        .map_err(|error| format!("inspecting the pod's netns panicked: {error}"))??;
        if let Some(existing) = self.servers.get(&identity.uid)
            && existing.identity() == &identity
        {
            return Ok(());
        }
        let context = self.context.clone();
        let uid = identity.uid.clone();
        // The new listeners open before the old ones (a re-added pod) close: SO_REUSEPORT.
        let server =
            tokio::task::spawn_blocking(move || PodServer::open(&context, identity, netns))
                .await
                .map_err(|error| format!("opening the pod's listeners panicked: {error}"))?
                .map_err(|error| error.to_string())?;
        self.servers.insert(uid, server);
        Ok(())
    }

    fn keep(&mut self, uid: &str) -> Result<(), String> {
        if self.servers.contains_key(uid) {
            Ok(())
        } else {
            Err(format!("pod {uid} is not served by this proxy"))
        }
    }

    fn delete(&mut self, uid: &str) {
        if let Some(server) = self.servers.remove(uid) {
            let pod = server.identity();
            tracing::info!(pod = %pod.name, namespace = %pod.namespace, %uid, "pod no longer enrolled; its listeners are closed");
        }
    }

    fn retain(&mut self, named: &HashSet<String>) {
        self.servers.retain(|uid, server| {
            let keep = named.contains(uid);
            if !keep {
                let pod = server.identity();
                tracing::info!(pod = %pod.name, namespace = %pod.namespace, %uid, "pod not in the agent's snapshot: its listeners are closed");
            }
            keep
        });
    }
}
