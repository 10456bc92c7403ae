//! The CNI plugin (`ztunnel-cni`, chained after the primary plugin) and the installer that
//! places it in the node's CNI configuration.
//!
//! The plugin's stdout carries only the spec's JSON: the previous result on ADD, the version
//! document on VERSION, the error document on failure.

pub mod install;
pub mod plugin;
pub mod spec;

use std::io::{Read, Write};

pub use plugin::{Pod, PodEnroller, RemovedPod};
pub use spec::{Command, ErrorCode, Invocation, NetworkConfig, PluginSettings};

use crate::config::ConfigError;

/// Why a plugin invocation failed; each maps to one of the spec's error codes.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The environment is wrong.
    #[error("bad CNI environment: {0}")]
    Invocation(#[from] spec::InvocationError),
    /// stdin is not the network configuration.
    #[error("cannot decode the network configuration on stdin: {0}")]
    Decode(serde_json::Error),
    /// The runtime speaks a version we do not.
    #[error("{0}")]
    Version(String),
    /// The configuration is wrong (e.g. not chained, no address assigned).
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    /// stdin could not be read.
    #[error("cannot read stdin: {0}")]
    Stdin(std::io::Error),
    /// The workload configuration named in the plugin settings cannot be used.
    #[error("cannot use the workload configuration: {0}")]
    WorkloadConfig(ConfigError),
    /// Enrollment in the mesh failed.
    #[error("cannot enroll the pod in the mesh: {0}")]
    Enrollment(String),
    /// A reply could not be written.
    #[error("cannot encode the reply: {0}")]
    Encode(serde_json::Error),
}

impl CniError {
    /// The spec's error code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Invocation(_) => ErrorCode::InvalidEnvironment,
            Self::Decode(_) => ErrorCode::DecodingFailure,
            Self::Version(_) => ErrorCode::IncompatibleVersion,
            Self::InvalidConfig(_) => ErrorCode::InvalidNetworkConfig,
            Self::Stdin(_) | Self::WorkloadConfig(_) | Self::Encode(_) => ErrorCode::IoFailure,
            Self::Enrollment(_) => ErrorCode::EnrollmentFailed,
        }
    }

    /// The spec's error document for this error.
    pub fn reply(&self, cni_version: &str) -> spec::ErrorReply {
        let (msg, details) = match self {
            Self::Enrollment(details) => (
                "cannot enroll the pod in the mesh".to_owned(),
                details.clone(),
            ),
            other => (other.to_string(), String::new()),
        };
        spec::ErrorReply {
            cni_version: cni_version.to_owned(),
            code: self.code() as u32,
            msg,
            details,
        }
    }
}

/// The whole plugin process: reads the environment and stdin, runs, writes stdout, and gives
/// the exit status (0 on success, 1 with the error document on failure).
pub fn plugin_main(
    variable: impl Fn(&str) -> Option<String>,
    mut stdin: impl Read,
    mut stdout: impl Write,
    enroller: &dyn PodEnroller,
) -> i32 {
    let mut input = String::new();
    let result = Invocation::from_env(variable)
        .map_err(CniError::from)
        .and_then(|invocation| {
            if invocation.command != Command::Version {
                stdin.read_to_string(&mut input).map_err(CniError::Stdin)?;
            }
            plugin::run(&invocation, &input, enroller)
        });
    let (document, status) = match result {
        Ok(output) => (output, 0),
        Err(error) => {
            tracing::error!(%error, code = error.code() as u32, "CNI invocation failed");
            // Answer in the runtime's version when we could read it.
            let version = serde_json::from_str::<serde_json::Value>(&input)
                .ok()
                .and_then(|config| config.get("cniVersion")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| spec::CNI_VERSION.to_owned());
            let reply = serde_json::to_string(&error.reply(&version)).unwrap_or_else(|_| {
                format!(
                    r#"{{"cniVersion":"{}","code":5,"msg":"cannot encode the error"}}"#,
                    spec::CNI_VERSION
                )
            });
            (Some(reply), 1)
        }
    };
    if let Some(document) = document
        && writeln!(stdout, "{document}").is_err()
    {
        return 1;
    }
    status
}
