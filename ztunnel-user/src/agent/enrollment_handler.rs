//! The agent's answers to the CNI plugin on the enrollment socket.
//!
//! The plugin has already enrolled the pod durably (maps, TC link, enrolled set) before it asks;
//! what it waits for is a proxy *serving* the pod. So each request makes the agent publish the
//! enrolled set at once ([`AgentControl::publish_now`]) and the answer waits for a connected
//! proxy's ZDS ack. With no proxy connected the answer is `Ok` at once: the pod is captured and
//! stays in the node's fail mode until a proxy connects (a pod must be able to start while
//! ztunnel restarts). A proxy's refusal is the plugin's error.

use std::{net::IpAddr, os::fd::OwnedFd, path::PathBuf, time::Duration};

use super::{AgentControl, announce::pod_uid};
use crate::{
    enrollment::{EnrollmentHandler, PodRef},
    inpod::state::{EnrolledPod, read_enrolled},
    zds::server::{AckBook, Served},
};

/// How long the plugin's request waits for a proxy to serve the pod.
const SERVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `CHECK` waits for a proxy's answer about a pod it should already serve.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Answers enrollment requests through an [`AgentControl`] and the proxies' [`AckBook`].
#[derive(Debug, Clone)]
pub struct AgentEnrollmentHandler {
    control: AgentControl,
    acks: AckBook,
    run_dir: PathBuf,
}

impl AgentEnrollmentHandler {
    /// A handler for the agent behind `control`, reading the enrolled set in `run_dir`.
    pub fn new(control: AgentControl, acks: AckBook, run_dir: PathBuf) -> Self {
        Self {
            control,
            acks,
            run_dir,
        }
    }

    fn enrolled(&self, pod: &PodRef) -> Result<Option<EnrolledPod>, String> {
        let set = read_enrolled(&self.run_dir)
            .map_err(|error| format!("cannot read the enrolled set: {error}"))?;
        Ok(set
            .pods
            .into_iter()
            .find(|known| known.name == pod.name && known.namespace == pod.namespace))
    }

    async fn publish(&self) -> Result<(), String> {
        self.control
            .publish_now()
            .await
            .map_err(|error| error.to_string())
    }
}

impl EnrollmentHandler for AgentEnrollmentHandler {
    async fn enroll(
        &self,
        pod: PodRef,
        _ips: Vec<IpAddr>,
        netns_path: String,
        _netns: OwnedFd,
    ) -> Result<(), String> {
        let Some(enrolled) = self.enrolled(&pod)? else {
            return Err(format!(
                "pod {}/{} (netns {netns_path}) is not in the enrolled set: enroll it before asking ztunnel to serve it",
                pod.namespace, pod.name
            ));
        };
        self.publish().await?;
        let uid = pod_uid(&enrolled);
        match self.acks.wait_served(&uid, SERVE_TIMEOUT).await {
            Ok(Served::Yes) => Ok(()),
            Ok(Served::NoProxy) => {
                tracing::info!(pod = %pod.name, namespace = %pod.namespace, "pod enrolled while no proxy is connected: captured, in the node's fail mode until one connects");
                Ok(())
            }
            Err(reason) => Err(format!(
                "pod {}/{} is enrolled but not served: {reason}",
                pod.namespace, pod.name
            )),
        }
    }

    async fn unenroll(&self, _pod: PodRef) -> Result<(), String> {
        self.publish().await
    }

    async fn check(&self, pod: PodRef, ips: Vec<IpAddr>) -> Result<(), String> {
        let Some(enrolled) = self.enrolled(&pod)? else {
            return Err(format!(
                "pod {}/{} is not enrolled",
                pod.namespace, pod.name
            ));
        };
        if let Some(missing) = ips.iter().find(|ip| !enrolled.ips.contains(ip)) {
            return Err(format!(
                "pod {}/{} is enrolled without address {missing}",
                pod.namespace, pod.name
            ));
        }
        match self
            .acks
            .wait_served(&pod_uid(&enrolled), CHECK_TIMEOUT)
            .await
        {
            Ok(Served::Yes) => Ok(()),
            Ok(Served::NoProxy) => Err(format!(
                "pod {}/{} is enrolled but not served: no proxy is connected to the agent",
                pod.namespace, pod.name
            )),
            Err(reason) => Err(format!(
                "pod {}/{} is enrolled but not served: {reason}",
                pod.namespace, pod.name
            )),
        }
    }
}
