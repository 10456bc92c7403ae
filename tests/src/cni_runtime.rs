//! A minimal container runtime's CNI half, as containerd and CRI-O drive it: runs a conflist's
//! plugins in order for `ADD` (threading each result into the next plugin's `prevResult`), in
//! reverse order for `DEL`, and in order for `CHECK`, through the `CNI_*` environment and stdin.
//!
//! Plugins run inside the node's network namespace (the "host" side of the pod's interface), so
//! a pod created here is wired to its simulated node exactly as kubelet would wire it.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// The interface name a runtime gives the pod's primary interface.
pub const POD_INTERFACE: &str = "eth0";

/// One network configuration list and where its plugins are found.
#[derive(Debug, Clone)]
pub struct CniRuntime {
    /// The parsed conflist (`cniVersion`, `name`, `plugins`).
    conflist: Value,
    /// `CNI_PATH`: directories searched for plugin binaries, in order.
    plugin_path: Vec<PathBuf>,
    /// Name of the network namespace (under /run/netns) the plugins run in: the node's.
    node_netns: String,
}

/// What the runtime knows about a pod's sandbox.
#[derive(Debug, Clone)]
pub struct PodSandbox {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: the pod's network namespace path.
    pub netns_path: PathBuf,
    /// `K8S_POD_NAME`.
    pub name: String,
    /// `K8S_POD_NAMESPACE`.
    pub namespace: String,
}

/// A plugin's failure: the spec's error JSON when it printed one.
#[derive(Debug)]
pub struct PluginFailure {
    /// The plugin's `type`.
    pub plugin: String,
    /// The command (`ADD`, `DEL`, `CHECK`).
    pub command: &'static str,
    /// Its exit status.
    pub status: std::process::ExitStatus,
    /// Its standard output parsed as JSON, if it was JSON (the spec's `code`/`msg`/`details`).
    pub error: Option<Value>,
    /// Its raw standard output and error.
    pub output: String,
}

impl std::fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CNI plugin {} {} failed ({}): {}",
            self.plugin, self.command, self.status, self.output
        )
    }
}

impl std::error::Error for PluginFailure {}

impl CniRuntime {
    /// A runtime for `conflist`, running plugins from `plugin_path` inside netns `node_netns`.
    pub fn new(
        conflist: Value,
        plugin_path: Vec<PathBuf>,
        node_netns: impl Into<String>,
    ) -> anyhow::Result<Self> {
        let plugins = conflist
            .get("plugins")
            .and_then(Value::as_array)
            .context("conflist has no `plugins` array")?;
        if plugins.is_empty() {
            bail!("conflist has an empty `plugins` array");
        }
        Ok(Self {
            conflist,
            plugin_path,
            node_netns: node_netns.into(),
        })
    }

    /// Runs `ADD` through the whole chain and returns the last plugin's result.
    pub fn add(&self, pod: &PodSandbox) -> anyhow::Result<Value> {
        let mut previous: Option<Value> = None;
        for plugin in self.plugins() {
            let result = self.invoke("ADD", plugin, pod, previous.as_ref())?;
            let parsed: Value = serde_json::from_slice(&result).with_context(|| {
                format!(
                    "plugin {} printed a result that is not JSON",
                    plugin_type(plugin)
                )
            })?;
            previous = Some(parsed);
        }
        previous.context("the chain produced no result")
    }

    /// Runs `CHECK` through the chain with the result `ADD` returned.
    pub fn check(&self, pod: &PodSandbox, result: &Value) -> anyhow::Result<()> {
        for plugin in self.plugins() {
            self.invoke("CHECK", plugin, pod, Some(result))?;
        }
        Ok(())
    }

    /// Runs `DEL` through the chain in reverse order. Every plugin is called even when an
    /// earlier one fails, as runtimes do; the first failure is returned.
    pub fn del(&self, pod: &PodSandbox, result: Option<&Value>) -> anyhow::Result<()> {
        let mut first_failure = None;
        for plugin in self.plugins().rev() {
            if let Err(error) = self.invoke("DEL", plugin, pod, result) {
                first_failure.get_or_insert(error);
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    fn plugins(&self) -> impl DoubleEndedIterator<Item = &Value> {
        self.conflist["plugins"].as_array().into_iter().flatten()
    }

    /// The stdin of one plugin call: its own section plus the list's `name` and `cniVersion`,
    /// and `prevResult` when there is one.
    fn plugin_config(&self, plugin: &Value, previous: Option<&Value>) -> Value {
        let mut config = plugin.clone();
        if let Some(object) = config.as_object_mut() {
            object.insert("name".into(), self.conflist["name"].clone());
            object.insert("cniVersion".into(), self.conflist["cniVersion"].clone());
            if let Some(previous) = previous {
                object.insert("prevResult".into(), previous.clone());
            }
        }
        config
    }

    fn find_plugin(&self, name: &str) -> anyhow::Result<PathBuf> {
        self.plugin_path
            .iter()
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.exists())
            .with_context(|| format!("CNI plugin {name:?} not found in {:?}", self.plugin_path))
    }

    fn invoke(
        &self,
        command: &'static str,
        plugin: &Value,
        pod: &PodSandbox,
        previous: Option<&Value>,
    ) -> anyhow::Result<Vec<u8>> {
        let kind = plugin_type(plugin);
        let binary = self.find_plugin(kind)?;
        let stdin = serde_json::to_vec(&self.plugin_config(plugin, previous))?;
        let cni_path = std::env::join_paths(&self.plugin_path)?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node_netns])
            .arg(&binary)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.container_id)
            .env("CNI_NETNS", &pod.netns_path)
            .env("CNI_IFNAME", POD_INTERFACE)
            .env("CNI_PATH", cni_path)
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                    pod.namespace, pod.name, pod.container_id
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run CNI plugin {}", binary.display()))?;
        child
            .stdin
            .take()
            .context("plugin stdin was not piped")?
            .write_all(&stdin)
            .with_context(|| format!("cannot write the config to CNI plugin {kind}"))?;
        let output = child
            .wait_with_output()
            .with_context(|| format!("CNI plugin {kind} did not finish"))?;
        if !output.status.success() {
            return Err(PluginFailure {
                plugin: kind.to_owned(),
                command,
                status: output.status,
                error: serde_json::from_slice(&output.stdout).ok(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            }
            .into());
        }
        Ok(output.stdout)
    }
}

fn plugin_type(plugin: &Value) -> &str {
    plugin
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("<no type>")
}

/// A conflist that wires pods to a node the way a simple primary CNI does: `ptp` with
/// `host-local` IPAM from `pod_subnet`, a route only for the simulated cluster range via
/// `gateway` (nothing routes out; the explicit gateway keeps ptp's CHECK exact), IPAM state
/// under `ipam_dir`, then `chained` plugins (ours comes last).
pub fn ptp_conflist(
    network: &str,
    pod_subnet: &str,
    gateway: &str,
    cluster_range: &str,
    ipam_dir: &Path,
    chained: &[Value],
) -> Value {
    let family = PodFamily {
        subnet: pod_subnet,
        gateway,
        cluster_range,
    };
    ptp_conflist_families(network, &[family], ipam_dir, chained)
}

/// One address family of a pod network: host-local hands out `subnet` with `gateway`, and the
/// pod routes only `cluster_range` through it.
#[derive(Debug, Clone, Copy)]
pub struct PodFamily<'a> {
    /// The node's pod subnet of this family.
    pub subnet: &'a str,
    /// Its gateway (the node side of every pod's ptp link).
    pub gateway: &'a str,
    /// The only destination the pod gets a route to.
    pub cluster_range: &'a str,
}

/// [`ptp_conflist`] with one host-local range per family (dual stack: an IPv4 and an IPv6 one).
pub fn ptp_conflist_families(
    network: &str,
    families: &[PodFamily<'_>],
    ipam_dir: &Path,
    chained: &[Value],
) -> Value {
    let ranges: Vec<Value> = families
        .iter()
        .map(|family| json!([{ "subnet": family.subnet, "gateway": family.gateway }]))
        .collect();
    let routes: Vec<Value> = families
        .iter()
        .map(|family| json!({ "dst": family.cluster_range, "gw": family.gateway }))
        .collect();
    let mut plugins = vec![json!({
        "type": "ptp",
        "ipMasq": false,
        "mtu": 1500,
        "ipam": {
            "type": "host-local",
            "ranges": ranges,
            "routes": routes,
            "dataDir": ipam_dir,
        },
    })];
    plugins.extend(chained.iter().cloned());
    json!({ "cniVersion": "1.0.0", "name": network, "plugins": plugins })
}

/// The pod addresses (without prefix length) a CNI result lists.
pub fn result_addresses(result: &Value) -> Vec<std::net::IpAddr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|cidr| cidr.split('/').next())
        .filter_map(|address| address.parse().ok())
        .collect()
}
