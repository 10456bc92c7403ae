//! What the agent tells proxies about each enrolled pod: a uid, its name, namespace and service
//! account (ZDS `WorkloadInfo`), and its netns.

use crate::{
    inpod::state::{EnrolledPod, EnrolledSet},
    state::{StateHandle, workload::DEFAULT_SERVICE_ACCOUNT},
    zds::{
        messages::WorkloadInfo,
        server::{AnnouncedPod, AnnouncedPods},
    },
};

/// A pod's uid on ZDS: `<namespace>/<name>`, stable for the pod's life (a pod re-created under
/// the same name gets a new netns, which the ZDS server tells apart by its cookie).
pub fn pod_uid(pod: &EnrolledPod) -> String {
    format!("{}/{}", pod.namespace, pod.name)
}

/// Every enrolled pod, with the service account `mesh` knows for one of its addresses
/// (Kubernetes' `default` otherwise).
pub fn announced(set: &EnrolledSet, mesh: Option<&StateHandle>) -> AnnouncedPods {
    let state = mesh.map(StateHandle::snapshot);
    set.pods
        .iter()
        .map(|pod| {
            let service_account = state
                .as_ref()
                .and_then(|state| pod.ips.iter().find_map(|ip| state.workload_by_ip(*ip)))
                .map(|workload| workload.service_account.clone())
                .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.to_owned());
            let announced = AnnouncedPod {
                info: WorkloadInfo {
                    name: pod.name.clone(),
                    namespace: pod.namespace.clone(),
                    service_account,
                },
                netns: pod.netns.clone(),
                netns_cookie: pod.netns_cookie,
            };
            (pod_uid(pod), announced)
        })
        .collect()
}
