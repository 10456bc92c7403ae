//! Installing the plugin on a node: the binary into the CNI bin dir, and an entry appended as
//! the last plugin of the primary network's conflist (the file the runtime uses: the first
//! `.conf`, `.conflist` or `.json` file in name order, as libcni chooses). Uninstall removes
//! exactly that entry and the binary. Files are replaced atomically (write, then rename) so the
//! runtime never reads half a file.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use serde_json::{Map, Value};

use super::spec::PluginSettings;

/// The `type` of our conflist entry, and the name of the binary in the CNI bin dir.
pub const PLUGIN_NAME: &str = "ztunnel-cni";
/// Extensions the runtime reads network configurations from.
const CONFIG_EXTENSIONS: &[&str] = &["conf", "conflist", "json"];

/// Why installing or uninstalling failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The directory cannot be listed.
    #[error("cannot list CNI configuration directory {dir}: {source}")]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// No primary network configuration yet.
    #[error(
        "no CNI network configuration (*.conf, *.conflist, *.json) in {dir}: is the primary network plugin installed yet?"
    )]
    NoPrimary {
        /// The directory.
        dir: PathBuf,
    },
    /// A file cannot be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The primary configuration is not JSON, or not a network configuration.
    #[error("{path} is not a usable CNI network configuration: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The conflist that now chains the plugin.
    pub path: PathBuf,
    /// Whether anything was written (false when it was already up to date).
    pub changed: bool,
}

/// Our conflist entry.
pub fn plugin_entry(settings: &PluginSettings) -> Value {
    let mut entry = Map::new();
    entry.insert("type".into(), Value::String(PLUGIN_NAME.into()));
    if let Ok(Value::Object(fields)) = serde_json::to_value(settings) {
        entry.extend(fields.into_iter().filter(|(_, value)| !value.is_null()));
    }
    Value::Object(entry)
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_NAME)
}

/// Makes `entry` the last plugin of the conflist `document`, replacing any earlier entry of
/// ours. Returns whether the document changed.
pub fn insert_plugin(document: &mut Value, entry: Value) -> Result<bool, String> {
    let plugins = document
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .ok_or("no \"plugins\" list")?;
    if plugins.last() == Some(&entry)
        && plugins.iter().filter(|plugin| is_ours(plugin)).count() == 1
    {
        return Ok(false);
    }
    plugins.retain(|plugin| !is_ours(plugin));
    plugins.push(entry);
    Ok(true)
}

/// Removes our entries from the conflist `document`. Returns whether it changed.
pub fn remove_plugin(document: &mut Value) -> bool {
    let Some(plugins) = document.get_mut("plugins").and_then(Value::as_array_mut) else {
        return false;
    };
    let before = plugins.len();
    plugins.retain(|plugin| !is_ours(plugin));
    plugins.len() != before
}

/// A single-plugin `.conf` document as the equivalent conflist.
pub fn conf_to_conflist(mut document: Value) -> Result<Value, String> {
    let fields = document.as_object_mut().ok_or("not a JSON object")?;
    if !fields.contains_key("type") {
        return Err("no \"type\": not a plugin configuration".into());
    }
    let mut conflist = Map::new();
    for key in ["cniVersion", "name"] {
        if let Some(value) = fields.remove(key) {
            conflist.insert(key.into(), value);
        }
    }
    conflist.insert("plugins".into(), Value::Array(vec![document]));
    Ok(Value::Object(conflist))
}

/// The file the runtime uses: the first network configuration in name order.
pub fn primary_config(dir: &Path) -> Result<PathBuf, InstallError> {
    let entries = fs::read_dir(dir).map_err(|source| InstallError::ReadDir {
        dir: dir.to_owned(),
        source,
    })?;
    let mut candidates: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file())
        .filter(|path| {
            path.extension()
                .and_then(|extension| extension.to_str())
                .is_some_and(|extension| CONFIG_EXTENSIONS.contains(&extension))
        })
        .collect();
    candidates.sort();
    candidates
        .into_iter()
        .next()
        .ok_or_else(|| InstallError::NoPrimary {
            dir: dir.to_owned(),
        })
}

fn read_json(path: &Path) -> Result<Value, InstallError> {
    let text = fs::read_to_string(path).map_err(|source| InstallError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|error| InstallError::Malformed {
        path: path.to_owned(),
        reason: error.to_string(),
    })
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let io_error = |action, source| InstallError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or(PLUGIN_NAME);
    // Not a .conf/.conflist/.json name, so the runtime never picks the temporary file.
    let staging = path.with_file_name(format!(".{name}.ztunnel-tmp"));
    let mut file = fs::File::create(&staging)
        .map_err(|source| io_error("create a temporary file for", source))?;
    file.write_all(bytes)
        .map_err(|source| io_error("write", source))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|source| io_error("set permissions of", source))?;
    file.sync_all().map_err(|source| io_error("sync", source))?;
    fs::rename(&staging, path).map_err(|source| io_error("replace", source))
}

fn write_json(path: &Path, document: &Value) -> Result<(), InstallError> {
    let mut text =
        serde_json::to_string_pretty(document).map_err(|error| InstallError::Malformed {
            path: path.to_owned(),
            reason: error.to_string(),
        })?;
    text.push('\n');
    replace_file(path, text.as_bytes(), 0o644)
}

/// Chains the plugin last in the primary network configuration of `conf_dir`. A single-plugin
/// `.conf` becomes a `.conflist` of the same name. Running it again changes nothing.
pub fn install(conf_dir: &Path, entry: &Value) -> Result<Installed, InstallError> {
    let primary = primary_config(conf_dir)?;
    let malformed = |reason: String| InstallError::Malformed {
        path: primary.clone(),
        reason,
    };
    let mut document = read_json(&primary)?;
    let is_conflist = primary
        .extension()
        .is_some_and(|extension| extension == "conflist")
        || document.get("plugins").is_some();
    let target = if is_conflist {
        primary.clone()
    } else {
        document = conf_to_conflist(document).map_err(malformed)?;
        primary.with_extension("conflist")
    };
    let changed =
        insert_plugin(&mut document, entry.clone()).map_err(malformed)? || target != primary;
    if changed {
        write_json(&target, &document)?;
        if target != primary {
            fs::remove_file(&primary).map_err(|source| InstallError::Io {
                action: "remove",
                path: primary.clone(),
                source,
            })?;
        }
        tracing::info!(path = %target.display(), "ztunnel-cni chained into the primary network configuration");
    }
    Ok(Installed {
        path: target,
        changed,
    })
}

/// Removes the plugin from the primary network configuration of `conf_dir`, if it is there.
/// Returns the file it was removed from.
pub fn uninstall(conf_dir: &Path) -> Result<Option<PathBuf>, InstallError> {
    let primary = match primary_config(conf_dir) {
        Ok(primary) => primary,
        Err(InstallError::NoPrimary { .. }) => return Ok(None),
        Err(other) => return Err(other),
    };
    let mut document = read_json(&primary)?;
    if !remove_plugin(&mut document) {
        return Ok(None);
    }
    write_json(&primary, &document)?;
    tracing::info!(path = %primary.display(), "ztunnel-cni removed from the primary network configuration");
    Ok(Some(primary))
}

/// Copies the plugin binary (`source`, normally this executable) into `bin_dir` as
/// `ztunnel-cni`, replacing an older copy atomically.
pub fn install_binary(source: &Path, bin_dir: &Path) -> Result<PathBuf, InstallError> {
    let target = bin_dir.join(PLUGIN_NAME);
    let bytes = fs::read(source).map_err(|source_error| InstallError::Io {
        action: "read",
        path: source.to_owned(),
        source: source_error,
    })?;
    replace_file(&target, &bytes, 0o755)?;
    Ok(target)
}

/// Removes the plugin binary from `bin_dir`; succeeds when it is already gone.
pub fn remove_binary(bin_dir: &Path) -> Result<(), InstallError> {
    let target = bin_dir.join(PLUGIN_NAME);
    match fs::remove_file(&target) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(InstallError::Io {
            action: "remove",
            path: target,
            source: error,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
