//! The CNI 1.0.0 contract: the `CNI_*` environment, the network configuration on stdin, the
//! result and error documents on stdout.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The CNI version this plugin speaks natively.
pub const CNI_VERSION: &str = "1.0.0";
/// Every version whose `prevResult` and config shape this plugin accepts (it only passes the
/// result through, and `ips[].address` is the same in all of them).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// The spec's well-known error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    /// Incompatible CNI version.
    IncompatibleVersion = 1,
    /// Unsupported field in network configuration.
    UnsupportedField = 2,
    /// Container unknown or does not exist.
    UnknownContainer = 3,
    /// Invalid necessary environment variables.
    InvalidEnvironment = 4,
    /// I/O failure.
    IoFailure = 5,
    /// Failed to decode content.
    DecodingFailure = 6,
    /// Invalid network config.
    InvalidNetworkConfig = 7,
    /// Try again later.
    TryAgainLater = 11,
    /// Plugin-specific: enrollment of the pod into the mesh failed.
    EnrollmentFailed = 100,
}

/// The operation the runtime asks for (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// A container was created.
    Add,
    /// A container is going away.
    Del,
    /// Is the container's networking as expected?
    Check,
    /// Which versions do you speak?
    Version,
}

/// Why the invocation itself is malformed; each maps to a spec error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvocationError {
    /// `CNI_COMMAND` is missing or unknown.
    #[error("CNI_COMMAND is {0:?}; expected ADD, DEL, CHECK or VERSION")]
    UnknownCommand(Option<String>),
    /// A variable the command needs is missing or empty.
    #[error("{variable} must be set for {command:?}")]
    MissingVariable {
        /// The variable.
        variable: &'static str,
        /// The command that needs it.
        command: Command,
    },
    /// `CNI_ARGS` is not `KEY=VALUE;KEY=VALUE`.
    #[error("CNI_ARGS entry {0:?} is not KEY=VALUE")]
    MalformedArgs(String),
}

/// Everything the runtime passes through the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: the path of the pod's network namespace (may be empty on DEL).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, parsed.
    pub args: BTreeMap<String, String>,
}

impl Invocation {
    /// Reads the invocation from `variable` lookups (the process environment in production).
    pub fn from_env(variable: impl Fn(&str) -> Option<String>) -> Result<Self, InvocationError> {
        let command = match variable("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            other => return Err(InvocationError::UnknownCommand(other.map(str::to_owned))),
        };
        let present = |name: &str| variable(name).filter(|value| !value.is_empty());
        let required = |name: &'static str| {
            present(name).ok_or(InvocationError::MissingVariable {
                variable: name,
                command,
            })
        };
        if command == Command::Version {
            return Ok(Self {
                command,
                container_id: String::new(),
                netns: None,
                ifname: String::new(),
                args: BTreeMap::new(),
            });
        }
        let container_id = required("CNI_CONTAINERID")?;
        let ifname = required("CNI_IFNAME")?;
        let netns = match command {
            Command::Del => present("CNI_NETNS"),
            _ => Some(required("CNI_NETNS")?),
        }
        .map(PathBuf::from);
        let args = parse_args(&present("CNI_ARGS").unwrap_or_default())?;
        Ok(Self {
            command,
            container_id,
            netns,
            ifname,
            args,
        })
    }

    /// `K8S_POD_NAMESPACE` and `K8S_POD_NAME` from `CNI_ARGS`, when the runtime is Kubernetes.
    pub fn kubernetes_pod(&self) -> Option<(&str, &str)> {
        Some((
            self.args.get("K8S_POD_NAMESPACE")?,
            self.args.get("K8S_POD_NAME")?,
        ))
    }
}

/// Parses `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
pub fn parse_args(text: &str) -> Result<BTreeMap<String, String>, InvocationError> {
    text.split(';')
        .filter(|entry| !entry.trim().is_empty())
        .map(|entry| match entry.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
            _ => Err(InvocationError::MalformedArgs(entry.to_owned())),
        })
        .collect()
}

/// This plugin's own settings, given in its entry of the conflist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginSettings {
    /// The node ztunnel's enrollment socket.
    #[serde(default)]
    pub enrollment_socket: Option<PathBuf>,
    /// Pods in these namespaces are never enrolled (e.g. `kube-system`).
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
    /// The workload configuration; pods it does not list pass through untouched.
    #[serde(default)]
    pub workload_config: Option<PathBuf>,
}

/// The network configuration on stdin: the spec's fields, this plugin's settings, and the
/// previous plugin's result, kept as raw JSON so it can be handed back byte-for-byte equivalent.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    /// The version the runtime speaks.
    pub cni_version: String,
    /// The network name.
    #[serde(default)]
    pub name: String,
    /// The plugin type (`ztunnel-cni`).
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// The previous plugin's result (ADD, CHECK; optional on DEL).
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// This plugin's settings.
    #[serde(flatten)]
    pub settings: PluginSettings,
}

/// The version check every command starts with.
pub fn check_version(version: &str) -> Result<(), String> {
    if SUPPORTED_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(format!(
            "cniVersion {version:?} is not supported; supported: {}",
            SUPPORTED_VERSIONS.join(", ")
        ))
    }
}

/// The pod's addresses, from `prevResult.ips[].address` (`ip/prefix`).
pub fn pod_ips(prev_result: &Value) -> Result<Vec<IpAddr>, String> {
    let ips = prev_result
        .get("ips")
        .and_then(Value::as_array)
        .ok_or("prevResult has no ips list: the primary plugin assigned no address")?;
    ips.iter()
        .map(|entry| {
            let address = entry
                .get("address")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("prevResult ips entry {entry} has no address"))?;
            let ip = address.split_once('/').map_or(address, |(ip, _prefix)| ip);
            ip.parse()
                .map_err(|_| format!("prevResult address {address:?} is not ip/prefix"))
        })
        .collect()
}

/// The spec's error document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorReply {
    /// The version of the request (or ours).
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// One of [`ErrorCode`].
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// Longer details.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

/// The reply to VERSION.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionReply {
    /// The version of this document.
    pub cni_version: String,
    /// What this plugin accepts.
    pub supported_versions: Vec<String>,
}

impl VersionReply {
    /// The reply this plugin gives.
    pub fn ours() -> Self {
        Self {
            cni_version: CNI_VERSION.to_owned(),
            supported_versions: SUPPORTED_VERSIONS
                .iter()
                .map(|&version| version.to_owned())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/var/run/netns/pod-a"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=sleep-1;K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=1234",
        ),
    ];

    #[test]
    fn reads_an_add_from_the_environment() {
        let invocation = Invocation::from_env(env(ADD)).unwrap();
        assert_eq!(invocation.command, Command::Add);
        assert_eq!(invocation.container_id, "c0ffee");
        assert_eq!(
            invocation.netns.as_deref(),
            Some(std::path::Path::new("/var/run/netns/pod-a"))
        );
        assert_eq!(invocation.kubernetes_pod(), Some(("ns1", "sleep-1")));
        assert_eq!(invocation.args["IgnoreUnknown"], "1");
    }

    #[test]
    fn each_command_requires_its_variables() {
        let without = |name: &str| -> Vec<(&str, &str)> {
            ADD.iter()
                .copied()
                .filter(|(key, _)| *key != name)
                .collect()
        };
        let error = Invocation::from_env(env(&without("CNI_NETNS"))).unwrap_err();
        assert_eq!(error.to_string(), "CNI_NETNS must be set for Add");
        assert!(Invocation::from_env(env(&without("CNI_CONTAINERID"))).is_err());
        assert!(Invocation::from_env(env(&without("CNI_IFNAME"))).is_err());
        let mut del = without("CNI_NETNS");
        del[0] = ("CNI_COMMAND", "DEL");
        assert_eq!(
            Invocation::from_env(env(&del)).unwrap().netns,
            None,
            "DEL may come without a netns"
        );
        let mut check = without("CNI_NETNS");
        check[0] = ("CNI_COMMAND", "CHECK");
        assert!(Invocation::from_env(env(&check)).is_err());
        assert_eq!(
            Invocation::from_env(env(&[("CNI_COMMAND", "VERSION")]))
                .unwrap()
                .command,
            Command::Version
        );
        assert_eq!(
            Invocation::from_env(env(&[("CNI_COMMAND", "GC")])).unwrap_err(),
            InvocationError::UnknownCommand(Some("GC".into()))
        );
        assert_eq!(
            Invocation::from_env(env(&[])).unwrap_err(),
            InvocationError::UnknownCommand(None)
        );
    }

    #[test]
    fn cni_args_must_be_key_value_pairs() {
        assert_eq!(parse_args("").unwrap().len(), 0);
        assert_eq!(parse_args("A=1;B=").unwrap()["B"], "");
        assert_eq!(
            parse_args("A=1;junk").unwrap_err(),
            InvocationError::MalformedArgs("junk".into())
        );
    }

    #[test]
    fn reads_the_network_config_and_pod_ips() {
        let config: NetworkConfig =
            serde_json::from_str(include_str!("testdata/add-stdin.json")).unwrap();
        assert_eq!(config.cni_version, "1.0.0");
        assert_eq!(config.plugin_type, "ztunnel-cni");
        assert_eq!(config.settings.exclude_namespaces, ["kube-system"]);
        let ips = pod_ips(config.prev_result.as_ref().unwrap()).unwrap();
        assert_eq!(
            ips,
            [
                "198.18.1.5".parse::<IpAddr>().unwrap(),
                "2001:db8:1::5".parse().unwrap()
            ]
        );
    }

    #[test]
    fn malformed_previous_results_are_explained() {
        assert!(
            pod_ips(&serde_json::json!({}))
                .unwrap_err()
                .contains("no ips")
        );
        assert!(
            pod_ips(&serde_json::json!({"ips": [{"address": "nope/24"}]}))
                .unwrap_err()
                .contains("nope/24")
        );
        assert!(
            pod_ips(&serde_json::json!({"ips": [{"gateway": "198.18.1.1"}]}))
                .unwrap_err()
                .contains("no address")
        );
    }

    #[test]
    fn versions() {
        assert!(check_version("1.0.0").is_ok() && check_version("0.4.0").is_ok());
        assert!(
            check_version("0.2.0")
                .unwrap_err()
                .contains("supported: 0.3.0")
        );
        let reply = serde_json::to_value(VersionReply::ours()).unwrap();
        assert_eq!(reply["cniVersion"], "1.0.0");
        assert_eq!(reply["supportedVersions"][3], "1.0.0");
    }
}
