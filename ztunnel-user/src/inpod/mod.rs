//! Everything ztunnel does inside enrolled pods' network namespaces:
//!
//! - [`capture`]: eBPF or iptables capture (the node's mode); [`iptables`]: the in-pod rules
//!   of the latter.
//! - [`netns`]: entering a pod's netns around `socket()`/`bind()`.
//! - [`enroll`]: the enroll/unenroll library API; [`state`]: the durable enrolled set.
//! - [`listeners`]: the in-pod listeners 15001/15006/15008 and their accept loops, which hand
//!   connections to a [`handler::PodTrafficHandler`] ([`forwarder::TcpForwarder`] for now).
//! - [`socket_factory`]: [`crate::socket::SocketFactory`] for a pod's netns, plus upstream
//!   sockets that keep the client's address; [`routing`]: the in-pod rule that brings the
//!   application's replies to those back to ztunnel.
//! - [`daemon`]: the `ztunnel daemon` lifecycle; [`enrollment_handler`]: its answers to the CNI
//!   plugin on the enrollment socket; [`takeover`]: an upgrade's new daemon serving beside the
//!   old one until it can take over.

pub mod capture;
pub mod daemon;
pub mod enroll;
pub mod enrollment_handler;
pub mod forwarder;
pub mod handler;
pub mod iptables;
pub mod listeners;
pub mod netns;
pub mod original_destination;
pub mod routing;
pub mod socket_factory;
pub mod state;
pub mod takeover;

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
    fn state(run_dir: &Path, source: std::io::Error) -> Self {
        Self::State {
            run_dir: run_dir.to_owned(),
            source,
        }
    }
}
