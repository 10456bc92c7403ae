//! The enrollment channel between the CNI plugin and the node's ztunnel.
//!
//! The plugin (a short-lived process run by the container runtime) connects to a Unix socket
//! under the node's run directory, sends one [`protocol::Request`] as a length-prefixed JSON
//! frame and, for enrollments, the pod's network namespace as a file descriptor in the same
//! message (`SCM_RIGHTS`), so ztunnel never has to resolve a netns path that may already be gone.
//! ztunnel answers once it has acted — for an enrollment, after the pod's in-pod listeners are
//! open — so the pod starts only when it is really served.

pub mod client;
pub mod protocol;
pub mod server;

pub use client::EnrollmentClient;
pub use protocol::{PodRef, Reply, Request};
pub use server::{EnrollmentHandler, EnrollmentServer};

/// The socket's file name under the node's run directory.
pub const SOCKET_NAME: &str = "enrollment.sock";

/// Errors of the enrollment channel, on either side.
#[derive(Debug, thiserror::Error)]
pub enum EnrollmentError {
    /// The socket could not be reached (ztunnel is not running or the path is wrong).
    #[error(
        "cannot connect to ztunnel's enrollment socket {path}: {source} (is ztunnel running on this node?)"
    )]
    Connect {
        /// The socket path.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Reading or writing a frame failed.
    #[error("enrollment socket I/O failed while {doing}: {source}")]
    Io {
        /// What was being done.
        doing: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// A frame was not a valid message.
    #[error("malformed enrollment message: {0}")]
    Malformed(String),
    /// ztunnel refused or failed the request.
    #[error("ztunnel refused the request: {0}")]
    Refused(String),
}

#[cfg(test)]
mod tests;
