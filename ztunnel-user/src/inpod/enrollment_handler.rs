//! The daemon's answer to the CNI plugin on the enrollment socket.
//!
//! The plugin has already enrolled the pod durably (maps, TC link, enrolled set) before it asks;
//! what it waits for is ztunnel *serving* the pod. So each request makes the daemon loop
//! reconcile at once (open listeners for new pods, close those of removed ones) and report which
//! pods it serves; the answer is `Ok` only when the pod's listeners are open.

use std::{
    collections::HashSet,
    net::IpAddr,
    os::fd::{AsRawFd, OwnedFd},
    path::PathBuf,
};

use tokio::sync::{mpsc, oneshot};

use super::{netns::Netns, state::read_enrolled};
use crate::enrollment::{EnrollmentHandler, PodRef};

/// Netns cookies of the pods whose listeners are open.
pub type ServedPods = HashSet<u64>;

/// A request to the daemon loop: reconcile now, then report what is served.
pub type ReconcileRequest = oneshot::Sender<ServedPods>;

/// Answers enrollment requests by asking the daemon loop.
#[derive(Debug, Clone)]
pub struct DaemonEnrollmentHandler {
    requests: mpsc::Sender<ReconcileRequest>,
    run_dir: PathBuf,
}

impl DaemonEnrollmentHandler {
    /// A handler that sends reconcile requests to the loop through `requests`.
    pub fn new(requests: mpsc::Sender<ReconcileRequest>, run_dir: PathBuf) -> Self {
        Self { requests, run_dir }
    }

    async fn reconcile(&self) -> Result<ServedPods, String> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(reply)
            .await
            .map_err(|_| "ztunnel is shutting down".to_owned())?;
        answer
            .await
            .map_err(|_| "ztunnel is shutting down".to_owned())
    }

    fn enrolled_cookie(&self, pod: &PodRef) -> Result<Option<(u64, Vec<IpAddr>)>, String> {
        let set = read_enrolled(&self.run_dir)
            .map_err(|error| format!("cannot read the enrolled set: {error}"))?;
        Ok(set
            .pods
            .into_iter()
            .find(|known| known.name == pod.name && known.namespace == pod.namespace)
            .map(|known| (known.netns_cookie, known.ips)))
    }
}

/// The cookie of the network namespace behind `fd`.
fn netns_cookie(fd: &OwnedFd) -> Result<u64, String> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Netns::open(std::path::Path::new(&path))
        .and_then(|netns| netns.cookie())
        .map_err(|error| format!("cannot read the cookie of the pod's netns: {error}"))
}

impl EnrollmentHandler for DaemonEnrollmentHandler {
    async fn enroll(
        &self,
        pod: PodRef,
        _ips: Vec<IpAddr>,
        netns_path: String,
        netns: OwnedFd,
    ) -> Result<(), String> {
        let cookie = tokio::task::spawn_blocking(move || netns_cookie(&netns))
            .await
            .map_err(|error| format!("netns cookie lookup panicked: {error}"))??;
        let served = self.reconcile().await?;
        if served.contains(&cookie) {
            return Ok(());
        }
        match self.enrolled_cookie(&pod)? {
            Some((enrolled, _)) if enrolled == cookie => Err(format!(
                "pod {}/{} is enrolled but its in-pod listeners could not be opened (see ztunnel's log)",
                pod.namespace, pod.name
            )),
            _ => Err(format!(
                "pod {}/{} (netns {netns_path}) is not in the enrolled set: enroll it before asking ztunnel to serve it",
                pod.namespace, pod.name
            )),
        }
    }

    async fn unenroll(&self, _pod: PodRef) -> Result<(), String> {
        self.reconcile().await.map(|_| ())
    }

    async fn check(&self, pod: PodRef, ips: Vec<IpAddr>) -> Result<(), String> {
        let Some((cookie, enrolled_ips)) = self.enrolled_cookie(&pod)? else {
            return Err(format!(
                "pod {}/{} is not enrolled",
                pod.namespace, pod.name
            ));
        };
        if let Some(missing) = ips.iter().find(|ip| !enrolled_ips.contains(ip)) {
            return Err(format!(
                "pod {}/{} is enrolled without address {missing}",
                pod.namespace, pod.name
            ));
        }
        if self.reconcile().await?.contains(&cookie) {
            Ok(())
        } else {
            Err(format!(
                "pod {}/{} is enrolled but not served",
                pod.namespace, pod.name
            ))
        }
    }
}
