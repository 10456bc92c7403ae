//! What the CNI specification (1.0.0) says a plugin receives and prints: the `CNI_*`
//! environment, the network configuration on stdin, the result passed through, and the error
//! object with its well-known codes.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The CNI version this plugin implements.
pub const CNI_VERSION: &str = "1.0.0";
/// The versions whose configurations and results this plugin accepts (it passes results through).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// Well-known error codes from the spec; ours start at 100.
pub mod codes {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Invalid necessary environment variables (e.g. CNI_COMMAND, CNI_CONTAINERID).
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure (reading stdin, the netns, the workload config).
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content (stdin is not JSON of the expected shape).
    pub const DECODE_FAILURE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: a transient condition.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// ztunnel refused or failed to enroll the pod.
    pub const ENROLLMENT_FAILED: u32 = 100;
    /// The pod is not enrolled although it should be (CHECK).
    pub const NOT_ENROLLED: u32 = 101;
    /// The node's pods map is full: no more pods can be enrolled on it.
    pub const POD_CAPACITY_REACHED: u32 = 102;
}

/// The error object a failing plugin prints on stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg} ({details})")]
pub struct CniError {
    /// The CNI version of the error's format.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// A well-known code or one of ours (≥ 100).
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// Longer details: what was being done, with which input.
    pub details: String,
}

impl CniError {
    /// An error with `code`, a short `msg` and `details`.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            cni_version: CNI_VERSION.to_owned(),
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }
}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Add the container to the network (enroll).
    Add,
    /// Remove it (unenroll); must succeed for unknown containers.
    Del,
    /// Check that it is still as ADD left it.
    Check,
    /// Report the supported versions.
    Version,
}

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for VERSION).
    pub container_id: String,
    /// `CNI_NETNS`: may be empty on DEL when the sandbox is already gone.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs.
    pub args: BTreeMap<String, String>,
}

impl Invocation {
    /// Reads the invocation from environment lookups (`std::env::var` in production).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let invalid = |name: &str, why: &str| {
            CniError::new(
                codes::INVALID_ENVIRONMENT,
                format!("invalid {name}"),
                why.to_owned(),
            )
        };
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some(other) => {
                return Err(invalid(
                    "CNI_COMMAND",
                    &format!("unknown command {other:?}; expected ADD, DEL, CHECK or VERSION"),
                ));
            }
            None => {
                return Err(invalid(
                    "CNI_COMMAND",
                    "CNI_COMMAND is not set: this binary is a CNI plugin, run by the container runtime",
                ));
            }
        };
        let container_id = get("CNI_CONTAINERID").unwrap_or_default();
        if command != Command::Version && container_id.is_empty() {
            return Err(invalid(
                "CNI_CONTAINERID",
                "CNI_CONTAINERID is required for ADD, DEL and CHECK",
            ));
        }
        let netns = get("CNI_NETNS")
            .filter(|netns| !netns.is_empty())
            .map(PathBuf::from);
        if matches!(command, Command::Add | Command::Check) && netns.is_none() {
            return Err(invalid(
                "CNI_NETNS",
                "CNI_NETNS is required for ADD and CHECK",
            ));
        }
        let args = parse_args(&get("CNI_ARGS").unwrap_or_default())
            .map_err(|why| invalid("CNI_ARGS", &why))?;
        Ok(Self {
            command,
            container_id,
            netns,
            ifname: get("CNI_IFNAME").unwrap_or_default(),
            args,
        })
    }

    /// `K8S_POD_NAME` and `K8S_POD_NAMESPACE`, when the runtime is Kubernetes'.
    pub fn pod(&self) -> Option<(&str, &str)> {
        Some((
            self.args.get("K8S_POD_NAME")?,
            self.args.get("K8S_POD_NAMESPACE")?,
        ))
    }
}

/// Parses `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
pub fn parse_args(text: &str) -> Result<BTreeMap<String, String>, String> {
    text.split(';')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
            _ => Err(format!("{pair:?} is not KEY=VALUE")),
        })
        .collect()
}

/// Our section of the conflist, with the fields every plugin gets.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    /// The conflist's `cniVersion`.
    pub cni_version: String,
    /// The network's name.
    pub name: String,
    /// Our plugin type (`ztunnel-cni`).
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The result of the plugins before us; required for ADD: we are a chained plugin.
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// The node's ztunnel run directory (enrollment socket, durable state).
    #[serde(default = "default_run_dir")]
    pub run_dir: PathBuf,
    /// Where ztunnel pins its maps and links.
    #[serde(default = "default_bpffs_root")]
    pub bpffs_root: PathBuf,
    /// The workload configuration file: pods absent from it are not enrolled.
    #[serde(default)]
    pub workload_config: Option<PathBuf>,
    /// Namespaces whose pods are never enrolled.
    #[serde(default = "default_excluded_namespaces")]
    pub exclude_namespaces: Vec<String>,
    /// How long to wait for ztunnel's answer, in seconds.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
}

fn default_run_dir() -> PathBuf {
    PathBuf::from("/var/run/ztunnel")
}

fn default_bpffs_root() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/ztunnel")
}

fn default_excluded_namespaces() -> Vec<String> {
    vec!["kube-system".to_owned()]
}

fn default_timeout_seconds() -> u64 {
    30
}

impl NetworkConfig {
    /// Parses stdin and checks the version.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let config: Self = serde_json::from_slice(stdin).map_err(|error| {
            CniError::new(
                codes::DECODE_FAILURE,
                "cannot decode the network configuration",
                error.to_string(),
            )
        })?;
        if !SUPPORTED_VERSIONS.contains(&config.cni_version.as_str()) {
            return Err(CniError::new(
                codes::INCOMPATIBLE_VERSION,
                "incompatible CNI version",
                format!(
                    "cniVersion {:?} is not one of {SUPPORTED_VERSIONS:?}",
                    config.cni_version
                ),
            ));
        }
        Ok(config)
    }

    /// The pod's addresses from `prevResult.ips` (CNI ≥ 0.3 result format).
    pub fn pod_ips(&self) -> Result<Vec<IpAddr>, CniError> {
        let previous = self.prev_result.as_ref().ok_or_else(|| {
            CniError::new(
                codes::INVALID_CONFIG,
                "no prevResult",
                "ztunnel-cni is a chained plugin: list it after the primary plugin in the conflist",
            )
        })?;
        let ips = previous
            .get("ips")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        ips.iter()
            .map(|ip| {
                let cidr = ip
                    .get("address")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                cidr.split('/')
                    .next()
                    .and_then(|address| address.parse().ok())
                    .ok_or_else(|| {
                        CniError::new(
                            codes::DECODE_FAILURE,
                            "bad address in prevResult",
                            format!("{cidr:?} is not an IP/prefix"),
                        )
                    })
            })
            .collect()
    }
}

/// The VERSION answer.
pub fn version_report() -> Value {
    serde_json::json!({ "cniVersion": CNI_VERSION, "supportedVersions": SUPPORTED_VERSIONS })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        }
    }

    #[test]
    fn reads_a_kubelet_add() {
        let invocation = Invocation::from_env(env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/var/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=sleep-1",
            ),
        ]))
        .unwrap();
        assert_eq!(invocation.command, Command::Add);
        assert_eq!(invocation.pod(), Some(("sleep-1", "default")));
        assert_eq!(
            invocation.netns,
            Some(PathBuf::from("/var/run/netns/cni-1"))
        );
    }

    #[test]
    fn rejects_bad_environments_with_code_4() {
        for (case, pairs) in [
            ("no command", vec![]),
            ("unknown command", vec![("CNI_COMMAND", "FROB")]),
            (
                "add without container",
                vec![("CNI_COMMAND", "ADD"), ("CNI_NETNS", "/x")],
            ),
            (
                "add without netns",
                vec![("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "a")],
            ),
            (
                "bad args",
                vec![
                    ("CNI_COMMAND", "DEL"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_ARGS", "novalue"),
                ],
            ),
        ] {
            let error = Invocation::from_env(env(&pairs)).expect_err(case);
            assert_eq!(error.code, codes::INVALID_ENVIRONMENT, "{case}: {error}");
        }
    }

    #[test]
    fn del_without_netns_is_allowed() {
        let invocation =
            Invocation::from_env(env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "a")])).unwrap();
        assert_eq!(invocation.netns, None);
    }

    #[test]
    fn parses_config_and_prev_result_ips() {
        let config = NetworkConfig::parse(br#"{"cniVersion":"1.0.0","name":"k8s","type":"ztunnel-cni",
            "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"198.18.1.2/24","gateway":"198.18.1.1"},
            {"address":"2001:db8::2/64"}]}}"#)
        .unwrap();
        assert_eq!(
            config.pod_ips().unwrap(),
            vec![
                "198.18.1.2".parse::<IpAddr>().unwrap(),
                "2001:db8::2".parse().unwrap()
            ]
        );
        assert_eq!(config.exclude_namespaces, vec!["kube-system"]);
    }

    #[test]
    fn rejects_bad_configs_with_spec_codes() {
        for (case, stdin, code) in [
            ("not json", &b"{"[..], codes::DECODE_FAILURE),
            (
                "missing name",
                br#"{"cniVersion":"1.0.0","type":"ztunnel-cni"}"#,
                codes::DECODE_FAILURE,
            ),
            (
                "old version",
                br#"{"cniVersion":"0.2.0","name":"n","type":"ztunnel-cni"}"#,
                codes::INCOMPATIBLE_VERSION,
            ),
        ] {
            assert_eq!(
                NetworkConfig::parse(stdin).expect_err(case).code,
                code,
                "{case}"
            );
        }
        let unchained =
            NetworkConfig::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"ztunnel-cni"}"#)
                .unwrap();
        assert_eq!(unchained.pod_ips().unwrap_err().code, codes::INVALID_CONFIG);
        let bad_ip = NetworkConfig::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"ztunnel-cni","prevResult":{"ips":[{"address":"nope/24"}]}}"#,
        )
        .unwrap();
        assert_eq!(bad_ip.pod_ips().unwrap_err().code, codes::DECODE_FAILURE);
    }
}
