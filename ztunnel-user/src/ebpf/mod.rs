//! Loading, attaching, pinning and adopting the kernel programs, and typed map access.
//!
//! - [`pins`]: where everything is pinned under the bpffs root.
//! - [`cgroup`]: the cgroup-v2 directory the cgroup programs attach to.
//! - [`loader`]: load against pinned maps; attach or adopt cgroup and TC links.
//! - [`map_layout`]: whether pinned maps have this build's layout, and what to do if not.
//! - [`maps`]: typed access to the pinned maps (daemon, enrollment, `inspect`).
//! - [`logs`]: kernel aya-log records into `tracing`.
//! - [`bpf_syscall`]: the link commands aya does not expose.

pub mod bpf_syscall;
pub mod cgroup;
pub mod loader;
pub mod logs;
pub mod map_layout;
pub mod maps;
pub mod pins;

use std::path::PathBuf;

pub use loader::{AttachOutcome, LoadedPrograms};
pub use maps::PinnedMaps;
pub use pins::PinLayout;

/// The kernel programs, built by `build.rs` from `ztunnel-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ztunnel"));

/// Failures of loading, attaching, pinning or map access.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// The object did not load.
    #[error(
        "cannot load the kernel programs with maps pinned under {root}: {source} (needs root, kernel >= 6.6 with BTF, and a bpffs at that path)"
    )]
    Load {
        /// bpffs root.
        root: PathBuf,
        /// aya's error.
        source: Box<aya::EbpfError>,
    },
    /// A program the loader expects is not in the object.
    #[error("the embedded object has no program {0} of the expected type (rebuild ztunnel)")]
    MissingProgram(&'static str),
    /// The verifier or kernel refused a program.
    #[error("the kernel refused program {program}: {source}")]
    LoadProgram {
        /// Program name.
        program: &'static str,
        /// aya's error (with the verifier log).
        source: Box<aya::programs::ProgramError>,
    },
    /// Attaching failed.
    #[error("cannot attach {program} to {target}: {source}")]
    Attach {
        /// Program name.
        program: &'static str,
        /// Cgroup or interface.
        target: String,
        /// aya's error.
        source: Box<aya::programs::ProgramError>,
    },
    /// Pinning failed.
    #[error("cannot pin at {path}: {source} (is the bpffs root writable?)")]
    Pin {
        /// Pin path.
        path: PathBuf,
        /// aya's error.
        source: Box<aya::pin::PinError>,
    },
    /// The cgroup directory is unusable.
    #[error(
        "cannot attach to cgroup {cgroup}: {source} (pass a cgroup-v2 directory with --cgroup)"
    )]
    Cgroup {
        /// The directory given.
        cgroup: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A pinned map could not be opened.
    #[error(
        "cannot open pinned map {path}: {source} (start `ztunnel daemon` or `ztunnel enroll` with this --bpffs-root first)"
    )]
    OpenPinnedMap {
        /// Pin path.
        path: PathBuf,
        /// aya's error.
        source: Box<aya::maps::MapError>,
    },
    /// A pinned map has another build's layout and this caller may not recreate it.
    #[error(
        "the map pinned at {path} has another ztunnel build's layout ({pinned}; this build: {expected}); start this build's `ztunnel daemon`, which recreates it, or remove the pin"
    )]
    IncompatibleMap {
        /// Pin path.
        path: PathBuf,
        /// What is pinned.
        pinned: map_layout::MapShape,
        /// What this build needs.
        expected: map_layout::MapShape,
    },
    /// The bpffs root cannot hold pins.
    #[error("cannot use bpffs root {root}: {problem}")]
    Bpffs {
        /// The `--bpffs-root` given.
        root: PathBuf,
        /// What is wrong with it.
        problem: pins::BpffsProblem,
    },
    /// A map read or write failed.
    #[error("cannot {action} map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// "read", "write", "delete".
        action: &'static str,
        /// aya's error.
        source: Box<aya::maps::MapError>,
    },
    /// Any other OS-level step.
    #[error("cannot {action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl EbpfError {
    /// A map access error.
    pub fn map(map: &'static str, action: &'static str, source: aya::maps::MapError) -> Self {
        Self::Map {
            map,
            action,
            source: Box::new(source),
        }
    }
}
