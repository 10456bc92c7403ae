//! The daemon's answers to the CNI plugin on the enrollment socket.
//!
//! The plugin has already enrolled the pod durably (maps, TC link, enrolled set) before it asks;
//! what it waits for is ztunnel *serving* the pod. So each request makes the daemon loop
//! reconcile at once ([`DaemonControl::reconcile`]) and the answer is `Ok` only when the pod's
//! in-pod listeners are open.

use std::{
    net::IpAddr,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use super::{
    daemon::{DaemonControl, ServedPod},
    netns::Netns,
    state::read_enrolled,
};
use crate::enrollment::{EnrollmentHandler, PodRef};

/// Answers enrollment requests through a [`DaemonControl`].
#[derive(Debug, Clone)]
pub struct DaemonEnrollmentHandler {
    control: DaemonControl,
    run_dir: PathBuf,
}

impl DaemonEnrollmentHandler {
    /// A handler that asks the daemon loop behind `control`, reading the enrolled set in `run_dir`.
    pub fn new(control: DaemonControl, run_dir: PathBuf) -> Self {
        Self { control, run_dir }
    }

    async fn served(&self) -> Result<Vec<ServedPod>, String> {
        self.control
            .reconcile()
            .await
            .map_err(|error| error.to_string())
    }

    fn enrolled_ips(&self, pod: &PodRef) -> Result<Option<Vec<IpAddr>>, String> {
        let set = read_enrolled(&self.run_dir)
            .map_err(|error| format!("cannot read the enrolled set: {error}"))?;
        Ok(set
            .pods
            .into_iter()
            .find(|known| known.name == pod.name && known.namespace == pod.namespace)
            .map(|known| known.ips))
    }
}

/// The cookie of the network namespace behind `fd`.
fn netns_cookie(fd: &OwnedFd) -> Result<u64, String> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Netns::open(Path::new(&path))
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
        if self
            .served()
            .await?
            .iter()
            .any(|served| served.netns_cookie == cookie)
        {
            return Ok(());
        }
        Err(match self.enrolled_ips(&pod)? {
            Some(_) => format!(
                "pod {}/{} is enrolled but its in-pod listeners could not be opened (see ztunnel's log)",
                pod.namespace, pod.name
            ),
            None => format!(
                "pod {}/{} (netns {netns_path}) is not in the enrolled set: enroll it before asking ztunnel to serve it",
                pod.namespace, pod.name
            ),
        })
    }

    async fn unenroll(&self, _pod: PodRef) -> Result<(), String> {
        self.served().await.map(|_| ())
    }

    async fn check(&self, pod: PodRef, ips: Vec<IpAddr>) -> Result<(), String> {
        let Some(enrolled_ips) = self.enrolled_ips(&pod)? else {
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
        let served = self.served().await?;
        if served
            .iter()
            .any(|served| served.namespace == pod.namespace && served.name == pod.name)
        {
            Ok(())
        } else {
            Err(format!(
                "pod {}/{} is enrolled but not served",
                pod.namespace, pod.name
            ))
        }
    }
}
