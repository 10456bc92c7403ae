//! What the plugin does for each command, against two seams: who enrolls the pod
//! ([`Enroller`]: ztunnel over its socket, or the kernel maps directly when ztunnel is down) and
//! who says whether a pod belongs to the mesh ([`WorkloadDirectory`]: the workload config).

use std::{net::IpAddr, path::Path};

use serde_json::Value;
use tracing::info;

use super::spec::{CniError, Command, Invocation, NetworkConfig, codes, version_report};
use crate::enrollment::PodRef;

/// Enrolls and unenrolls pods on this node.
pub trait Enroller {
    /// Enroll the pod; on failure nothing of it may be left behind.
    fn enroll(
        &self,
        config: &NetworkConfig,
        pod: &PodRef,
        ips: &[IpAddr],
        netns: &Path,
    ) -> Result<(), CniError>;
    /// Unenroll the pod; unknown pods succeed.
    fn unenroll(&self, config: &NetworkConfig, pod: &PodRef) -> Result<(), CniError>;
    /// Fails with [`codes::NOT_ENROLLED`] unless the pod is enrolled with these addresses.
    fn check(&self, config: &NetworkConfig, pod: &PodRef, ips: &[IpAddr]) -> Result<(), CniError>;
}

/// Answers whether a pod is part of the mesh.
pub trait WorkloadDirectory {
    /// Whether the pod `name`/`namespace` with `ips` is a workload of the mesh config.
    fn is_mesh_workload(
        &self,
        config: &NetworkConfig,
        name: &str,
        namespace: &str,
        ips: &[IpAddr],
    ) -> Result<bool, CniError>;
}

/// Runs one invocation; returns what to print on stdout on success.
pub fn execute(
    invocation: &Invocation,
    stdin: &[u8],
    enroller: &impl Enroller,
    directory: &impl WorkloadDirectory,
) -> Result<Option<Value>, CniError> {
    if invocation.command == Command::Version {
        return Ok(Some(version_report()));
    }
    let config = NetworkConfig::parse(stdin)?;
    let Some((name, namespace)) = invocation.pod() else {
        // Not a Kubernetes pod (no K8S_POD_* args): nothing of ours to do.
        return Ok(passthrough(&config, invocation.command));
    };
    let pod = PodRef {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        container_id: invocation.container_id.clone(),
    };
    if config
        .exclude_namespaces
        .iter()
        .any(|excluded| excluded == namespace)
    {
        info!(
            pod = name,
            namespace, "namespace excluded from the mesh; passing through"
        );
        return Ok(passthrough(&config, invocation.command));
    }
    match invocation.command {
        Command::Add => {
            let ips = config.pod_ips()?;
            if !directory.is_mesh_workload(&config, name, namespace, &ips)? {
                info!(
                    pod = name,
                    namespace,
                    ?ips,
                    "not a workload of the mesh config; passing through"
                );
                return Ok(passthrough(&config, invocation.command));
            }
            let netns = invocation.netns.as_deref().ok_or_else(|| {
                CniError::new(
                    codes::INVALID_ENVIRONMENT,
                    "invalid CNI_NETNS",
                    "CNI_NETNS is required for ADD",
                )
            })?;
            enroller.enroll(&config, &pod, &ips, netns)?;
            Ok(passthrough(&config, invocation.command))
        }
        Command::Del => {
            enroller.unenroll(&config, &pod)?;
            Ok(None)
        }
        Command::Check => {
            let ips = config.pod_ips()?;
            if directory.is_mesh_workload(&config, name, namespace, &ips)? {
                enroller.check(&config, &pod, &ips)?;
            }
            Ok(None)
        }
        Command::Version => Ok(Some(version_report())),
    }
}

/// A chained plugin's ADD prints its `prevResult` unchanged; DEL and CHECK print nothing.
fn passthrough(config: &NetworkConfig, command: Command) -> Option<Value> {
    match command {
        Command::Add => config.prev_result.clone(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[derive(Default)]
    struct FakeEnroller {
        calls: RefCell<Vec<String>>,
        fail_enroll: bool,
    }

    impl Enroller for FakeEnroller {
        fn enroll(
            &self,
            _: &NetworkConfig,
            pod: &PodRef,
            ips: &[IpAddr],
            _: &Path,
        ) -> Result<(), CniError> {
            self.calls
                .borrow_mut()
                .push(format!("enroll {} {ips:?}", pod.name));
            if self.fail_enroll {
                return Err(CniError::new(
                    codes::ENROLLMENT_FAILED,
                    "enrollment failed",
                    "pods map full",
                ));
            }
            Ok(())
        }
        fn unenroll(&self, _: &NetworkConfig, pod: &PodRef) -> Result<(), CniError> {
            self.calls
                .borrow_mut()
                .push(format!("unenroll {}", pod.name));
            Ok(())
        }
        fn check(&self, _: &NetworkConfig, pod: &PodRef, _: &[IpAddr]) -> Result<(), CniError> {
            self.calls.borrow_mut().push(format!("check {}", pod.name));
            Ok(())
        }
    }

    struct Mesh(&'static [&'static str]);

    impl WorkloadDirectory for Mesh {
        fn is_mesh_workload(
            &self,
            _: &NetworkConfig,
            name: &str,
            _: &str,
            _: &[IpAddr],
        ) -> Result<bool, CniError> {
            Ok(self.0.contains(&name))
        }
    }

    fn invocation(command: Command, args: &str) -> Invocation {
        Invocation {
            command,
            container_id: "sandbox-1".into(),
            netns: Some("/run/netns/pod".into()),
            ifname: "eth0".into(),
            args: super::super::spec::parse_args(args).unwrap(),
        }
    }

    const STDIN: &[u8] = br#"{"cniVersion":"1.0.0","name":"k8s","type":"ztunnel-cni",
        "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"198.18.1.2/24"}]}}"#;
    const POD_A: &str = "K8S_POD_NAME=a;K8S_POD_NAMESPACE=default";

    fn prev_result() -> Value {
        serde_json::from_slice::<Value>(STDIN).unwrap()["prevResult"].clone()
    }

    #[test]
    fn add_enrolls_and_prints_prev_result_unchanged() {
        let enroller = FakeEnroller::default();
        let out = execute(
            &invocation(Command::Add, POD_A),
            STDIN,
            &enroller,
            &Mesh(&["a"]),
        )
        .unwrap();
        assert_eq!(out, Some(prev_result()));
        assert_eq!(*enroller.calls.borrow(), vec!["enroll a [198.18.1.2]"]);
    }

    #[test]
    fn pods_outside_the_mesh_or_in_excluded_namespaces_pass_through() {
        let enroller = FakeEnroller::default();
        let out = execute(
            &invocation(Command::Add, POD_A),
            STDIN,
            &enroller,
            &Mesh(&[]),
        )
        .unwrap();
        assert_eq!(out, Some(prev_result()));
        let system = "K8S_POD_NAME=a;K8S_POD_NAMESPACE=kube-system";
        let out = execute(
            &invocation(Command::Add, system),
            STDIN,
            &enroller,
            &Mesh(&["a"]),
        )
        .unwrap();
        assert_eq!(out, Some(prev_result()));
        assert!(enroller.calls.borrow().is_empty());
    }

    #[test]
    fn enrollment_failure_is_a_cni_error() {
        let enroller = FakeEnroller {
            fail_enroll: true,
            ..Default::default()
        };
        let error = execute(
            &invocation(Command::Add, POD_A),
            STDIN,
            &enroller,
            &Mesh(&["a"]),
        )
        .unwrap_err();
        assert_eq!(error.code, codes::ENROLLMENT_FAILED);
    }

    #[test]
    fn del_and_check_print_nothing() {
        let enroller = FakeEnroller::default();
        assert_eq!(
            execute(
                &invocation(Command::Del, POD_A),
                STDIN,
                &enroller,
                &Mesh(&["a"])
            )
            .unwrap(),
            None
        );
        assert_eq!(
            execute(
                &invocation(Command::Check, POD_A),
                STDIN,
                &enroller,
                &Mesh(&["a"])
            )
            .unwrap(),
            None
        );
        assert_eq!(*enroller.calls.borrow(), vec!["unenroll a", "check a"]);
    }

    #[test]
    fn version_needs_no_config() {
        let out = execute(
            &invocation(Command::Version, ""),
            b"",
            &FakeEnroller::default(),
            &Mesh(&[]),
        )
        .unwrap();
        assert_eq!(out.unwrap()["cniVersion"], "1.0.0");
    }
}
