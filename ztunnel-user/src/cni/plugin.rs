//! The plugin's decisions for ADD / DEL / CHECK / VERSION. Enrollment itself (maps, TC link,
//! in-pod listeners) is behind [`PodEnroller`], implemented by the in-pod module.

use std::{net::IpAddr, path::PathBuf};

use serde_json::Value;

use super::{
    CniError,
    spec::{
        Command, Invocation, NetworkConfig, PluginSettings, VersionReply, check_version, pod_ips,
    },
};
use crate::config;

/// A pod to enroll or check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// The runtime's container (sandbox) id.
    pub container_id: String,
    /// The pod's network namespace.
    pub netns: PathBuf,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Kubernetes pod name.
    pub name: String,
    /// Addresses the primary plugin gave it.
    pub ips: Vec<IpAddr>,
}

/// A pod going away; DEL may come without a netns, or for a pod never enrolled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedPod {
    /// The runtime's container (sandbox) id.
    pub container_id: String,
    /// The pod's network namespace, when the runtime still has it.
    pub netns: Option<PathBuf>,
    /// `(namespace, name)` when the runtime is Kubernetes.
    pub pod: Option<(String, String)>,
}

/// Puts pods in the mesh and takes them out. Errors are shown to the runtime as-is.
pub trait PodEnroller {
    /// Enrolls `pod`; must leave nothing behind when it fails.
    fn enroll(&self, pod: &Pod, settings: &PluginSettings) -> Result<(), String>;
    /// Takes the pod out; must succeed for pods it does not know.
    fn remove(&self, pod: &RemovedPod, settings: &PluginSettings) -> Result<(), String>;
    /// Verifies `pod` is still enrolled as expected.
    fn check(&self, pod: &Pod, settings: &PluginSettings) -> Result<(), String>;
}

/// What to print on success: the JSON document, or nothing.
pub type Output = Option<String>;

/// Runs one invocation with the network configuration `stdin`.
pub fn run(
    invocation: &Invocation,
    stdin: &str,
    enroller: &dyn PodEnroller,
) -> Result<Output, CniError> {
    if invocation.command == Command::Version {
        return serde_json::to_string(&VersionReply::ours())
            .map(Some)
            .map_err(CniError::Encode);
    }
    let config: NetworkConfig = serde_json::from_str(stdin).map_err(CniError::Decode)?;
    check_version(&config.cni_version).map_err(CniError::Version)?;
    match invocation.command {
        Command::Add | Command::Check => {
            let prev_result = config.prev_result.clone().ok_or_else(|| {
                CniError::InvalidConfig(
                    "no prevResult: ztunnel-cni must be chained after the primary network plugin"
                        .into(),
                )
            })?;
            let pod = match pod_to_enroll(invocation, &config, &prev_result)? {
                Some(pod) if invocation.command == Command::Add => {
                    enroller
                        .enroll(&pod, &config.settings)
                        .map_err(CniError::Enrollment)?;
                    Some(pod)
                }
                Some(pod) => {
                    enroller
                        .check(&pod, &config.settings)
                        .map_err(CniError::Enrollment)?;
                    None
                }
                None => None,
            };
            if let Some(pod) = pod {
                tracing::info!(namespace = %pod.namespace, pod = %pod.name, ips = ?pod.ips, "pod enrolled");
            }
            match invocation.command {
                Command::Add => Ok(Some(result_for_runtime(prev_result, &config.cni_version)?)),
                _ => Ok(None),
            }
        }
        Command::Del => {
            let removed = RemovedPod {
                container_id: invocation.container_id.clone(),
                netns: invocation.netns.clone(),
                pod: invocation
                    .kubernetes_pod()
                    .map(|(namespace, name)| (namespace.to_owned(), name.to_owned())),
            };
            enroller
                .remove(&removed, &config.settings)
                .map_err(CniError::Enrollment)?;
            Ok(None)
        }
        Command::Version => unreachable!("answered above"),
    }
}

/// The pod to enroll, or `None` when it passes through untouched (not Kubernetes, excluded
/// namespace, or absent from the workload configuration).
fn pod_to_enroll(
    invocation: &Invocation,
    config: &NetworkConfig,
    prev_result: &Value,
) -> Result<Option<Pod>, CniError> {
    let Some((namespace, name)) = invocation.kubernetes_pod() else {
        tracing::info!(container = %invocation.container_id, "no K8S_POD_NAMESPACE/K8S_POD_NAME; passing through");
        return Ok(None);
    };
    if config
        .settings
        .exclude_namespaces
        .iter()
        .any(|excluded| excluded == namespace)
    {
        tracing::info!(%namespace, pod = %name, "namespace excluded; passing through");
        return Ok(None);
    }
    let ips = pod_ips(prev_result).map_err(CniError::InvalidConfig)?;
    if let Some(path) = &config.settings.workload_config {
        let state = config::load_state(path).map_err(CniError::WorkloadConfig)?;
        let listed = ips.iter().any(|ip| state.workload_by_ip(*ip).is_some())
            || state
                .workloads()
                .any(|workload| workload.namespace == namespace && workload.name == name);
        if !listed {
            tracing::info!(%namespace, pod = %name, ?ips, "pod not in the workload configuration; passing through");
            return Ok(None);
        }
    }
    let netns = invocation
        .netns
        .clone()
        .ok_or_else(|| CniError::InvalidConfig("CNI_NETNS is empty".into()))?;
    Ok(Some(Pod {
        container_id: invocation.container_id.clone(),
        netns,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        ips,
    }))
}

/// The previous result, handed back unchanged except that it must carry a `cniVersion`.
fn result_for_runtime(mut prev_result: Value, version: &str) -> Result<String, CniError> {
    if let Some(result) = prev_result.as_object_mut() {
        result
            .entry("cniVersion")
            .or_insert_with(|| Value::String(version.to_owned()));
    }
    serde_json::to_string(&prev_result).map_err(CniError::Encode)
}

#[cfg(test)]
mod tests;
