//! The plugin's real seams: enrollment on this node, and the workload configuration file.
//!
//! ADD enrolls the pod durably itself (map entries, the pinned TC link, the enrolled-set record,
//! through the same library the daemon uses), so a pod created while ztunnel is down is captured
//! and fail-closed at once. It then hands ztunnel the pod's netns over the enrollment socket and
//! waits (at most `timeoutSeconds`) until ztunnel says the pod's in-pod listeners are open.
//!
//! While ztunnel restarts, ADD still succeeds: whether the socket is gone (ztunnel down), the
//! connection drops (ztunnel stopping) or the answer does not come in time (ztunnel still
//! starting), the pod stays enrolled and fail-closed, and the next ztunnel serves it from the
//! enrolled set as it starts. Failing the ADD instead would only make the kubelet tear the
//! sandbox down and retry into the same state. Only when ztunnel answers and refuses the pod is
//! the enrollment rolled back and ADD failed, so nothing half-enrolled is left behind.

use std::{fs::File, net::IpAddr, os::fd::AsFd, path::Path, time::Duration};

use tracing::{info, warn};

use super::{
    plugin::{Enroller, WorkloadDirectory},
    spec::{CniError, NetworkConfig, codes},
};
use crate::{
    ebpf::{LoadedPrograms, PinLayout},
    enrollment::{EnrollmentClient, EnrollmentError, PodRef, Request, SOCKET_NAME},
    inpod::{
        InpodError,
        enroll::{self, PodSelector, PodSpec},
        state::read_enrolled,
    },
    state::Protocol,
};

/// The pod's interface inside its netns, as the runtime names it (`CNI_IFNAME`).
const DEFAULT_INTERFACE: &str = "eth0";

/// Enrolls pods on this node.
#[derive(Debug, Default)]
pub struct NodeEnroller {
    /// `CNI_IFNAME`; empty means `eth0`.
    pub interface: String,
}

fn client(config: &NetworkConfig) -> EnrollmentClient {
    EnrollmentClient::new(
        config.run_dir.join(SOCKET_NAME),
        Duration::from_secs(config.timeout_seconds),
    )
}

fn enrollment_failed(doing: &str, error: impl std::fmt::Display) -> CniError {
    CniError::new(
        codes::ENROLLMENT_FAILED,
        format!("cannot {doing}"),
        error.to_string(),
    )
}

impl Enroller for NodeEnroller {
    fn enroll(
        &self,
        config: &NetworkConfig,
        pod: &PodRef,
        ips: &[IpAddr],
        netns: &Path,
    ) -> Result<(), CniError> {
        let netns_file = File::open(netns).map_err(|error| {
            CniError::new(
                codes::IO_FAILURE,
                "cannot open the pod's netns",
                format!("{}: {error}", netns.display()),
            )
        })?;
        let layout = PinLayout::new(&config.bpffs_root);
        let mut programs = LoadedPrograms::load(&layout)
            .map_err(|error| enrollment_failed("load the kernel programs", error))?;
        let interface = if self.interface.is_empty() {
            DEFAULT_INTERFACE
        } else {
            &self.interface
        };
        let spec = PodSpec {
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            netns: netns.to_owned(),
            ips: ips.to_vec(),
            interface: interface.to_owned(),
        };
        enroll::enroll(&mut programs, &config.run_dir, &spec).map_err(|error| match error {
            InpodError::PodCapacity { .. } => CniError::new(
                codes::POD_CAPACITY_REACHED,
                "the node's ztunnel pod capacity is reached",
                error.to_string(),
            ),
            other => enrollment_failed("enroll the pod", other),
        })?;

        let request = Request::Enroll {
            pod: pod.clone(),
            ips: ips.to_vec(),
            netns_path: netns.display().to_string(),
        };
        let client = client(config);
        match client.send(&request, Some(netns_file.as_fd())) {
            Ok(()) => Ok(()),
            Err(error) if ztunnel_is_away(&error) => {
                // ztunnel is down, stopping or still starting: the pod stays enrolled and
                // fail-closed, and ztunnel opens its listeners when it (re)starts.
                warn!(socket = %client.path().display(), %error, pod = %pod.name, namespace = %pod.namespace, "ztunnel is not answering; the pod is enrolled (fail-closed) and will be served when ztunnel is back");
                Ok(())
            }
            Err(error) => {
                let selector = PodSelector::Name {
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                };
                if let Err(rollback) = enroll::unenroll(&layout, &config.run_dir, &selector) {
                    warn!(%rollback, pod = %pod.name, "rolling back the enrollment failed");
                }
                Err(enrollment_failed("have ztunnel serve the pod", error))
            }
        }
    }

    fn unenroll(&self, config: &NetworkConfig, pod: &PodRef) -> Result<(), CniError> {
        let layout = PinLayout::new(&config.bpffs_root);
        let selector = PodSelector::Name {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
        };
        if !config.run_dir.exists() {
            // ztunnel never ran here: nothing of this pod can exist on this node.
            return Ok(());
        }
        match enroll::unenroll(&layout, &config.run_dir, &selector) {
            Ok(Some(_)) => info!(pod = %pod.name, namespace = %pod.namespace, "pod unenrolled"),
            Ok(None) => info!(pod = %pod.name, namespace = %pod.namespace, "pod was not enrolled"),
            Err(error) => return Err(enrollment_failed("unenroll the pod", error)),
        }
        // Tell a running ztunnel at once (it would notice within its reconcile interval anyway).
        match client(config).send(&Request::Unenroll { pod: pod.clone() }, None) {
            Ok(()) | Err(EnrollmentError::Connect { .. }) => Ok(()),
            Err(error) => Err(enrollment_failed("tell ztunnel the pod is gone", error)),
        }
    }

    fn check(&self, config: &NetworkConfig, pod: &PodRef, ips: &[IpAddr]) -> Result<(), CniError> {
        let set = read_enrolled(&config.run_dir).map_err(|error| {
            CniError::new(
                codes::IO_FAILURE,
                "cannot read the enrolled set",
                error.to_string(),
            )
        })?;
        let enrolled = set
            .pods
            .iter()
            .find(|known| known.name == pod.name && known.namespace == pod.namespace)
            .ok_or_else(|| {
                CniError::new(
                    codes::NOT_ENROLLED,
                    "pod is not enrolled",
                    format!("{}/{} is not in the enrolled set", pod.namespace, pod.name),
                )
            })?;
        if ips.iter().any(|ip| !enrolled.ips.contains(ip)) {
            return Err(CniError::new(
                codes::NOT_ENROLLED,
                "pod is enrolled with other addresses",
                format!("enrolled with {:?}, prevResult has {ips:?}", enrolled.ips),
            ));
        }
        let request = Request::Check {
            pod: pod.clone(),
            ips: ips.to_vec(),
        };
        client(config)
            .send(&request, None)
            .map_err(|error| match error {
                EnrollmentError::Refused(message) => CniError::new(
                    codes::NOT_ENROLLED,
                    "ztunnel is not serving the pod",
                    message,
                ),
                other => CniError::new(
                    codes::TRY_AGAIN_LATER,
                    "cannot ask ztunnel",
                    other.to_string(),
                ),
            })
    }
}

/// Whether a failed hand-off means ztunnel is not there to answer (down, stopping, still
/// starting) rather than that it refused the pod.
fn ztunnel_is_away(error: &EnrollmentError) -> bool {
    matches!(
        error,
        EnrollmentError::Connect { .. } | EnrollmentError::Io { .. }
    )
}

/// A pod is a mesh workload when the workload config lists an HBONE workload with its namespace
/// and one of its addresses (`protocol: TCP` workloads are outside the mesh and never captured);
/// without a `workloadConfig` in the plugin's section, every pod is.
#[derive(Debug, Default)]
pub struct ConfigDirectory;

impl WorkloadDirectory for ConfigDirectory {
    fn is_mesh_workload(
        &self,
        config: &NetworkConfig,
        name: &str,
        namespace: &str,
        ips: &[IpAddr],
    ) -> Result<bool, CniError> {
        let Some(path) = &config.workload_config else {
            return Ok(true);
        };
        let state = crate::config::load_state(path).map_err(|error| {
            CniError::new(
                codes::IO_FAILURE,
                "cannot read the workload config",
                error.to_string(),
            )
        })?;
        Ok(ips.iter().any(|ip| {
            state.workload_by_ip(*ip).is_some_and(|workload| {
                workload.protocol == Protocol::Hbone
                    && workload.namespace == namespace
                    && (workload.name.is_empty() || workload.name == name)
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;
    use crate::enrollment::{EnrollmentClient, Request};

    fn request() -> Request {
        Request::Unenroll {
            pod: PodRef {
                name: "p".into(),
                namespace: "default".into(),
                container_id: "c".into(),
            },
        }
    }

    #[test]
    fn no_socket_or_a_dropped_connection_means_ztunnel_is_away_but_a_refusal_does_not() {
        let directory =
            std::env::temp_dir().join(format!("ztunnel-cni-away-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("enroll.sock");
        let client = EnrollmentClient::new(&path, Duration::from_secs(2));
        let down = client.send(&request(), None).unwrap_err();
        assert!(ztunnel_is_away(&down), "{down}");

        // A ztunnel that is stopping: it accepts, then closes without answering.
        let listener = UnixListener::bind(&path).unwrap();
        let stopping = std::thread::spawn(move || drop(listener.accept()));
        let dropped = client.send(&request(), None).unwrap_err();
        stopping.join().unwrap();
        assert!(ztunnel_is_away(&dropped), "{dropped}");

        let refused = EnrollmentError::Refused("not a mesh pod".into());
        assert!(!ztunnel_is_away(&refused));
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
