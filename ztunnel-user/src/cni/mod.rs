//! The chained CNI plugin: the same `ztunnel` binary, run by the container runtime under the
//! name `ztunnel-cni` (as the installer places it). It enrolls each new pod with the node's
//! ztunnel and passes the primary plugin's result through unchanged.

pub mod install;
pub mod node;
pub mod plugin;
pub mod spec;

use std::io::{Read, Write};

use spec::{CniError, Invocation, codes};

/// The name the plugin binary is installed under; `main` dispatches here when argv[0] is it.
pub const PLUGIN_NAME: &str = "ztunnel-cni";

/// The most stdin we read: a network configuration with its prevResult is a few KiB.
const MAX_STDIN: u64 = 1 << 20;

/// Runs the plugin on this process's environment and stdin; returns the exit code.
pub fn main() -> u8 {
    // stdout carries the result; logs go to stderr, which the runtime records.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let outcome = Invocation::from_env(|name| std::env::var(name).ok()).and_then(|invocation| {
        let mut stdin = Vec::new();
        std::io::stdin()
            .take(MAX_STDIN)
            .read_to_end(&mut stdin)
            .map_err(|error| {
                CniError::new(
                    codes::IO_FAILURE,
                    "cannot read the network configuration",
                    error.to_string(),
                )
            })?;
        let enroller = node::NodeEnroller {
            interface: invocation.ifname.clone(),
        };
        plugin::execute(&invocation, &stdin, &enroller, &node::ConfigDirectory)
    });
    let (text, code) = match outcome {
        Ok(Some(result)) => (result.to_string(), 0),
        Ok(None) => (String::new(), 0),
        Err(error) => (
            serde_json::to_string(&error).unwrap_or_else(|_| error.to_string()),
            1,
        ),
    };
    let mut stdout = std::io::stdout();
    // Nothing useful can be done if stdout is gone; the exit code still tells the runtime.
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
    code
}
