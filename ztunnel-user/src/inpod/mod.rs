//! ztunnel's presence inside enrolled pods' network namespaces, and the capture it installs
//! there:
//!
//! - [`netns`]: entering a pod's netns around `socket()`/`bind()`; its cookie and addresses.
//! - [`socket_factory`]: sockets made inside a pod's netns (listeners, bypass-marked outbound
//!   sockets, upstream sockets that keep the client's address); [`routing`]: the in-pod rule
//!   that brings the application's replies to those back to ztunnel.
//! - [`pod_server`]: one served pod — its listeners and who it is; [`pods`]: the proxy's set of
//!   served pods, driven over ZDS by the capture agent ([`crate::agent`]).
//! - [`capture`]: eBPF or iptables capture (the node's mode); [`iptables`]: the in-pod rules
//!   of the latter; [`enroll`]: the enroll/unenroll library API the agent, the CNI plugin and
//!   the CLI share; [`state`]: the durable enrolled set.

pub mod capture;
pub mod enroll;
pub mod iptables;
pub mod netns;
pub mod pod_server;
pub mod pods;
pub mod routing;
pub mod socket_factory;
pub mod state;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use crate::ebpf::EbpfError;

/// Failures of enrollment, listeners and the daemon lifecycle.
#[derive(Debug, thiserror::Error)]
pub enum InpodError {
    /// A kernel-side step failed.
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    /// The netns file cannot be used.
    #[error(
        "cannot use network namespace {path}: {source} (pass an existing netns path, e.g. /var/run/netns/<name>)"
    )]
    Netns {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The enrolled set cannot be read or written.
    #[error("cannot read or write the enrolled set in {run_dir}: {source} (check --run-dir)")]
    State {
        /// The run dir.
        run_dir: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An in-pod listener cannot be opened.
    #[error("cannot listen on {address} in pod {pod}: {source} (is something else bound there?)")]
    Listen {
        /// namespace/name.
        pod: String,
        /// Listener address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The node's `pods` map is full.
    #[error(
        "cannot enroll {pod}: the node already has {capacity} enrolled pods, the capacity of the pods map pinned under {bpffs_root} (set at its creation by `ztunnel daemon --max-pods`)"
    )]
    PodCapacity {
        /// namespace/name.
        pod: String,
        /// `max_entries` of the pinned `pods` map.
        capacity: u32,
        /// Where it is pinned.
        bpffs_root: PathBuf,
    },
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// Any other OS-level step.
    #[error("cannot {action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl InpodError {
    pub(crate) fn state(run_dir: &Path, source: std::io::Error) -> Self {
        Self::State {
            run_dir: run_dir.to_owned(),
            source,
        }
    }
}
