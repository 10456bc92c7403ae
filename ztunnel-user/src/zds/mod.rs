//! ZDS, Istio's node-agent-to-ztunnel protocol: how the capture agent hands each enrolled pod's
//! network namespace to whichever proxy serves the node — ours (`ztunnel proxy`, or the proxy half
//! of `ztunnel daemon`) or Istio's own ztunnel (shared mode, `INPOD_UDS` pointing at our socket).
//!
//! - [`transport`]: the `SOCK_SEQPACKET` Unix socket, one message per packet, a netns as an
//!   `SCM_RIGHTS` descriptor.
//! - [`messages`]: the protobuf messages, field for field those of Istio's `zds.proto`.
//! - [`server`]: the agent's end: hello, a snapshot of every enrolled pod (each add acked before
//!   the next), `SnapshotSent`, then adds and deletes as pods come and go.
//! - [`client`]: the proxy's end: announces itself, serves each added pod, acks every request,
//!   and after a snapshot stops serving the pods the snapshot did not name.
//!
//! The proxy connects; the agent listens (default [`DEFAULT_SOCKET`]). A proxy that loses its
//! agent keeps serving the pods it has and reconnects; the next snapshot reconciles.

pub mod client;
pub mod messages;
pub mod server;
pub mod transport;

use std::path::PathBuf;

/// Where the agent listens unless told otherwise: the path Istio's ztunnel dials by default.
pub const DEFAULT_SOCKET: &str = "/var/run/ztunnel/ztunnel.sock";

/// Failures of either end of ZDS.
#[derive(Debug, thiserror::Error)]
pub enum ZdsError {
    /// The agent's socket cannot be reached.
    #[error(
        "cannot connect to the capture agent's ZDS socket {path}: {source} (is `ztunnel agent` running on this node, with the same --zds-socket?)"
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The agent cannot listen.
    #[error(
        "cannot listen on the ZDS socket {path}: {source} (check the directory and that no other agent runs)"
    )]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Sending or receiving failed.
    #[error("cannot {action}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The peer sent something the protocol does not allow.
    #[error("malformed ZDS message: {0}")]
    Malformed(String),
    /// The peer took too long.
    #[error("the ZDS peer did not {0} in time")]
    Timeout(&'static str),
}

impl ZdsError {
    fn io(action: &'static str, source: std::io::Error) -> Self {
        Self::Io { action, source }
    }
}

#[cfg(test)]
mod tests;
