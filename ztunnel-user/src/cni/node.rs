//! The plugin's real seams: the node's ztunnel over the enrollment socket, and the workload
//! configuration file.

use std::{fs::File, net::IpAddr, os::fd::AsFd, path::Path, time::Duration};

use super::{
    plugin::{Enroller, WorkloadDirectory},
    spec::{CniError, NetworkConfig, codes},
};
use crate::enrollment::{EnrollmentClient, EnrollmentError, PodRef, Request, SOCKET_NAME};

/// Enrolls through the node's ztunnel.
#[derive(Debug, Default)]
pub struct NodeEnroller;

fn client(config: &NetworkConfig) -> EnrollmentClient {
    EnrollmentClient::new(
        config.run_dir.join(SOCKET_NAME),
        Duration::from_secs(config.timeout_seconds),
    )
}

fn to_cni_error(doing: &str, error: EnrollmentError) -> CniError {
    let code = match error {
        EnrollmentError::Connect { .. } => codes::TRY_AGAIN_LATER,
        _ => codes::ENROLLMENT_FAILED,
    };
    CniError::new(code, format!("cannot {doing}"), error.to_string())
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
        let request = Request::Enroll {
            pod: pod.clone(),
            ips: ips.to_vec(),
            netns_path: netns.display().to_string(),
        };
        client(config)
            .send(&request, Some(netns_file.as_fd()))
            .map_err(|error| to_cni_error("enroll the pod with ztunnel", error))
    }

    fn unenroll(&self, config: &NetworkConfig, pod: &PodRef) -> Result<(), CniError> {
        match client(config).send(&Request::Unenroll { pod: pod.clone() }, None) {
            Ok(()) => Ok(()),
            // DEL must succeed when there is nothing left to undo on this node.
            Err(EnrollmentError::Connect { .. }) if !config.run_dir.exists() => Ok(()),
            Err(error) => Err(to_cni_error("unenroll the pod", error)),
        }
    }

    fn check(&self, config: &NetworkConfig, pod: &PodRef, ips: &[IpAddr]) -> Result<(), CniError> {
        let request = Request::Check {
            pod: pod.clone(),
            ips: ips.to_vec(),
        };
        client(config)
            .send(&request, None)
            .map_err(|error| match error {
                EnrollmentError::Refused(message) => {
                    CniError::new(codes::NOT_ENROLLED, "pod is not enrolled", message)
                }
                other => to_cni_error("check the pod's enrollment", other),
            })
    }
}

/// Every pod is a mesh workload unless a workload config file says otherwise.
#[derive(Debug, Default)]
pub struct ConfigDirectory;

impl WorkloadDirectory for ConfigDirectory {
    fn is_mesh_workload(
        &self,
        config: &NetworkConfig,
        _name: &str,
        _namespace: &str,
        _ips: &[IpAddr],
    ) -> Result<bool, CniError> {
        // The workload config lookup arrives with the config module.
        Ok(config.workload_config.is_none())
    }
}
