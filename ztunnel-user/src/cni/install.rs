//! Installing the plugin on a node: the binary into the CNI bin dir as `ztunnel-cni`, and our
//! section appended as the last plugin of the primary CNI's network configuration (the file the
//! runtime uses: the first `.conflist`/`.conf`/`.json` by name in the conf dir). Uninstalling
//! removes our section and binary and nothing else.
//!
//! Every write is a temporary file renamed into place, so the runtime never reads a half-written
//! configuration.

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde_json::{Map, Value};

use super::PLUGIN_NAME;

/// Why an installation step failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A file could not be read, written or listed.
    #[error("cannot {doing} {path}: {source}")]
    Io {
        /// What was being done.
        doing: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// No primary network configuration to chain onto.
    #[error(
        "no CNI network configuration (*.conflist, *.conf, *.json) in {0}: install the primary CNI first"
    )]
    NoPrimary(PathBuf),
    /// The primary configuration is not valid JSON of the CNI shape.
    #[error("the CNI configuration {path} is not usable: {why}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

fn io_error(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_owned();
    move |source| InstallError::Io {
        doing,
        path,
        source,
    }
}

/// The network configuration file the runtime uses: the first by name with a CNI extension.
pub fn primary_config(conf_dir: &Path) -> Result<PathBuf, InstallError> {
    let entries = fs::read_dir(conf_dir).map_err(io_error("list", conf_dir))?;
    let mut candidates: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.is_file()
                && path
                    .extension()
                    .and_then(|extension| extension.to_str())
                    .is_some_and(|extension| matches!(extension, "conflist" | "conf" | "json"))
        })
        .collect();
    candidates.sort();
    candidates
        .into_iter()
        .next()
        .ok_or_else(|| InstallError::NoPrimary(conf_dir.to_owned()))
}

/// Returns `config` (a conflist, or a single-plugin `.conf`) as a conflist whose last plugin is
/// `ours`; an earlier section of ours is replaced, so installing twice changes nothing.
pub fn with_plugin(config: &Value, ours: &Value) -> Result<Value, String> {
    let object = config
        .as_object()
        .ok_or("the configuration is not a JSON object")?;
    let mut list = if object.contains_key("plugins") {
        object.clone()
    } else {
        single_to_list(object)?
    };
    let plugins = list
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .ok_or("`plugins` is not an array")?;
    plugins.retain(|plugin| !is_ours(plugin));
    if plugins.is_empty() {
        return Err("the configuration has no primary plugin to chain after".into());
    }
    plugins.push(ours.clone());
    Ok(Value::Object(list))
}

/// Returns `config` without any section of ours (unchanged if it has none).
pub fn without_plugin(config: &Value) -> Value {
    let mut config = config.clone();
    if let Some(plugins) = config.get_mut("plugins").and_then(Value::as_array_mut) {
        plugins.retain(|plugin| !is_ours(plugin));
    }
    config
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_NAME)
}

/// A single-plugin `.conf` as a conflist: `name` and `cniVersion` move to the list.
fn single_to_list(single: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    let name = single
        .get("name")
        .cloned()
        .ok_or("the configuration has no `name`")?;
    let version = single
        .get("cniVersion")
        .cloned()
        .ok_or("the configuration has no `cniVersion`")?;
    let mut plugin = single.clone();
    plugin.remove("name");
    plugin.remove("cniVersion");
    let mut list = Map::new();
    list.insert("cniVersion".into(), version);
    list.insert("name".into(), name);
    list.insert("plugins".into(), Value::Array(vec![Value::Object(plugin)]));
    Ok(list)
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let file_name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("ztunnel");
    let temporary = path.with_file_name(format!(".{file_name}.ztunnel-tmp"));
    fs::write(&temporary, bytes).map_err(io_error("write", &temporary))?;
    fs::set_permissions(&temporary, fs::Permissions::from_mode(mode))
        .map_err(io_error("set permissions on", &temporary))?;
    fs::rename(&temporary, path).map_err(io_error("rename into place", path))
}

fn read_config(path: &Path) -> Result<Value, InstallError> {
    let text = fs::read_to_string(path).map_err(io_error("read", path))?;
    serde_json::from_str(&text).map_err(|error| InstallError::Malformed {
        path: path.to_owned(),
        why: error.to_string(),
    })
}

/// Chains `ours` after the primary plugin in `conf_dir`. A `.conf` becomes a `.conflist` of
/// the same name (the runtime reads plugin lists only from `.conflist` files).
/// Returns the file now holding the chain.
pub fn install_config(conf_dir: &Path, ours: &Value) -> Result<PathBuf, InstallError> {
    let primary = primary_config(conf_dir)?;
    let config = read_config(&primary)?;
    let chained = with_plugin(&config, ours).map_err(|why| InstallError::Malformed {
        path: primary.clone(),
        why,
    })?;
    let target = if primary
        .extension()
        .is_some_and(|extension| extension == "conflist")
    {
        primary.clone()
    } else {
        primary.with_extension("conflist")
    };
    let text = serde_json::to_string_pretty(&chained).map_err(|error| InstallError::Malformed {
        path: primary.clone(),
        why: error.to_string(),
    })?;
    write_atomically(&target, text.as_bytes(), 0o644)?;
    if target != primary {
        fs::remove_file(&primary).map_err(io_error("remove the converted", &primary))?;
    }
    Ok(target)
}

/// Removes our section from every network configuration in `conf_dir` that has one.
/// Returns the files changed.
pub fn uninstall_config(conf_dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let entries = fs::read_dir(conf_dir).map_err(io_error("list", conf_dir))?;
    let mut changed = Vec::new();
    for path in entries.filter_map(Result::ok).map(|entry| entry.path()) {
        if path.extension().and_then(|extension| extension.to_str()) != Some("conflist") {
            continue;
        }
        let config = read_config(&path)?;
        let cleaned = without_plugin(&config);
        if cleaned != config {
            let text = serde_json::to_string_pretty(&cleaned).map_err(|error| {
                InstallError::Malformed {
                    path: path.clone(),
                    why: error.to_string(),
                }
            })?;
            write_atomically(&path, text.as_bytes(), 0o644)?;
            changed.push(path);
        }
    }
    Ok(changed)
}

/// Copies the running binary into `bin_dir` as `ztunnel-cni`.
pub fn install_binary(bin_dir: &Path) -> Result<PathBuf, InstallError> {
    let source = std::env::current_exe().map_err(io_error(
        "find the running binary",
        Path::new("/proc/self/exe"),
    ))?;
    let bytes = fs::read(&source).map_err(io_error("read", &source))?;
    let target = bin_dir.join(PLUGIN_NAME);
    write_atomically(&target, &bytes, 0o755)?;
    Ok(target)
}

/// Removes `ztunnel-cni` from `bin_dir` if it is there.
pub fn uninstall_binary(bin_dir: &Path) -> Result<(), InstallError> {
    let target = bin_dir.join(PLUGIN_NAME);
    match fs::remove_file(&target) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(io_error("remove", &target)(error))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;

/// `ztunnel install-cni`: what the DaemonSet's init container runs on each node.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// The node's CNI binary directory (mounted from the host).
    #[arg(long, default_value = "/host/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The node's CNI configuration directory (mounted from the host).
    #[arg(long, default_value = "/host/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// ztunnel's run directory on the node, where the plugin finds the enrollment socket.
    #[arg(long, default_value = "/var/run/ztunnel")]
    pub run_dir: PathBuf,
    /// ztunnel's bpffs pin root on the node.
    #[arg(long, default_value = "/sys/fs/bpf/ztunnel")]
    pub bpffs_root: PathBuf,
    /// The workload config file on the node; pods absent from it are not enrolled.
    #[arg(long)]
    pub workload_config: Option<PathBuf>,
    /// Namespaces whose pods are never enrolled.
    #[arg(long, value_delimiter = ',', default_value = "kube-system")]
    pub exclude_namespaces: Vec<String>,
    /// Remove the plugin's section and binary instead.
    #[arg(long)]
    pub uninstall: bool,
}

impl InstallArgs {
    /// Our section of the conflist.
    pub fn plugin_section(&self) -> Value {
        let mut section = serde_json::json!({
            "type": PLUGIN_NAME,
            "runDir": self.run_dir,
            "bpffsRoot": self.bpffs_root,
            "excludeNamespaces": self.exclude_namespaces,
        });
        if let (Some(path), Some(object)) = (&self.workload_config, section.as_object_mut()) {
            object.insert("workloadConfig".into(), serde_json::json!(path));
        }
        section
    }
}

/// Installs (or with `--uninstall`, removes) the plugin; returns a line per change made.
pub fn run(args: &InstallArgs) -> Result<Vec<String>, InstallError> {
    if args.uninstall {
        let changed = uninstall_config(&args.cni_conf_dir)?;
        uninstall_binary(&args.cni_bin_dir)?;
        let mut report: Vec<String> = changed
            .iter()
            .map(|path| format!("removed {PLUGIN_NAME} from {}", path.display()))
            .collect();
        report.push(format!(
            "removed {}",
            args.cni_bin_dir.join(PLUGIN_NAME).display()
        ));
        return Ok(report);
    }
    let binary = install_binary(&args.cni_bin_dir)?;
    let config = install_config(&args.cni_conf_dir, &args.plugin_section())?;
    Ok(vec![
        format!("installed {}", binary.display()),
        format!("chained {PLUGIN_NAME} last in {}", config.display()),
    ])
}
