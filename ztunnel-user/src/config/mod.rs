//! The configuration file: workloads, services and policies in the shape of Istio ztunnel's
//! local configuration (camelCase, `workloads` / `services` / `policies`), and its reload.
//!
//! A field Istio's file may carry but this proxy does not implement is refused with its name
//! and line, never silently ignored: a policy or routing field that is not honoured would be
//! a security or correctness surprise.

pub mod check;
pub mod reload;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use check::{check, describe};
pub use reload::{ConfigArgs, ReloadOutcome, Reloader};

use crate::{
    authz::Policy,
    state::compat::UNSUPPORTED_VALUE,
    state::{Service, State, StateError, Workload},
};

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalConfig {
    /// Every workload in the mesh this node needs to know about.
    #[serde(default)]
    pub workloads: Vec<Workload>,
    /// Services with their VIPs and endpoints.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Authorization policies.
    #[serde(default)]
    pub policies: Vec<Policy>,
}

/// Fields of Istio ztunnel's local configuration that this proxy does not implement.
/// (Fields Istio always writes are accepted at their default value: see `state::compat`.)
const ISTIO_FIELDS_NOT_IMPLEMENTED: &[&str] = &[
    "networkGateway",
    "applicationTunnel",
    "loadBalancer",
    "ipFamilies",
];

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A field this proxy does not know or does not implement.
    #[error("{origin}: line {line} column {column}: unsupported field `{field}` {hint}")]
    UnsupportedField {
        /// The file (or `<input>`).
        origin: String,
        /// The field name as written.
        field: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What to do about it.
        hint: &'static str,
    },
    /// A field Istio always writes, with a value other than the default we implement.
    #[error("{origin}: line {line}: {message}")]
    UnsupportedValue {
        /// The file (or `<input>`).
        origin: String,
        /// The field name.
        field: String,
        /// 1-based line of the field (best effort: the first line naming it from where the
        /// parser stopped).
        line: usize,
        /// What is unsupported and what to do.
        message: String,
    },
    /// Not YAML, or YAML of the wrong shape.
    #[error("{origin}: {location}{message}")]
    Syntax {
        /// The file (or `<input>`).
        origin: String,
        /// `line L column C: ` when known.
        location: String,
        /// The parser's message.
        message: String,
    },
    /// Well-formed but inconsistent (duplicate names or addresses).
    #[error("{origin}: {source}")]
    Invalid {
        /// The file (or `<input>`).
        origin: String,
        /// What is inconsistent.
        source: StateError,
    },
}

impl ConfigError {
    /// The 1-based line the error is on, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::UnsupportedField { line, .. } | Self::UnsupportedValue { line, .. } => {
                Some(*line)
            }
            _ => None,
        }
    }
}

/// Parses configuration text; `origin` names it in errors (a path, or `<input>`).
pub fn parse(text: &str, origin: &str) -> Result<LocalConfig, ConfigError> {
    // An empty document (or only comments) is an empty mesh, not an error.
    if text
        .lines()
        .all(|line| line.trim().is_empty() || line.trim_start().starts_with('#'))
    {
        return Ok(LocalConfig::default());
    }
    serde_norway::from_str(text).map_err(|error| describe_yaml_error(&error, text, origin))
}

/// Reads and parses the file at `path`.
pub fn load(path: &Path) -> Result<LocalConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Reads, parses and checks the file at `path`, giving the state it describes.
pub fn load_state(path: &Path) -> Result<State, ConfigError> {
    let config = load(path)?;
    State::from_config(config).map_err(|source| ConfigError::Invalid {
        origin: path.display().to_string(),
        source,
    })
}

fn describe_yaml_error(error: &serde_norway::Error, text: &str, origin: &str) -> ConfigError {
    let location = error.location();
    let full = error.to_string();
    // The parser appends " at line L column C"; we say where first, in our own words.
    let message = match full.rfind(" at line ") {
        Some(at) if location.is_some() => full[..at].to_owned(),
        _ => full.clone(),
    };
    if let (Some(field), Some(location)) = (unknown_field_name(&message), &location) {
        let hint = if ISTIO_FIELDS_NOT_IMPLEMENTED.contains(&field.as_str()) {
            "(Istio's ztunnel has it but this proxy does not implement it; remove it)"
        } else {
            "(not a field of Istio's local configuration here; check the spelling, fields are camelCase)"
        };
        return ConfigError::UnsupportedField {
            origin: origin.to_owned(),
            field,
            line: location.line(),
            column: location.column(),
            hint,
        };
    }
    if let (Some(field), Some(location)) = (unsupported_value_field(&message), &location) {
        // The parser points at the enclosing entry; the field is on that line or below it.
        let line = text
            .lines()
            .enumerate()
            .skip(location.line().saturating_sub(1))
            .find(|(_, line)| line.contains(&format!("{field}:")))
            .map_or(location.line(), |(index, _)| index + 1);
        let message = message[message.find(UNSUPPORTED_VALUE).unwrap_or(0)..].to_owned();
        return ConfigError::UnsupportedValue {
            origin: origin.to_owned(),
            field,
            line,
            message,
        };
    }
    ConfigError::Syntax {
        origin: origin.to_owned(),
        location: location
            .map(|location| format!("line {} column {}: ", location.line(), location.column()))
            .unwrap_or_default(),
        message,
    }
}

/// The field name in a `state::compat` "unsupported value for `name`: ..." message.
fn unsupported_value_field(message: &str) -> Option<String> {
    let rest = &message[message.find(UNSUPPORTED_VALUE)? + UNSUPPORTED_VALUE.len()..];
    let rest = rest.strip_prefix('`')?;
    Some(rest[..rest.find('`')?].to_owned())
}

/// The field name in serde's "unknown field `name`, expected ..." message.
fn unknown_field_name(message: &str) -> Option<String> {
    let rest = &message[message.find("unknown field `")? + "unknown field `".len()..];
    Some(rest[..rest.find('`')?].to_owned())
}

#[cfg(test)]
mod tests;
