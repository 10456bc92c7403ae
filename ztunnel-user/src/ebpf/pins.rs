//! Where ztunnel pins things under its bpffs root (default `/sys/fs/bpf/ztunnel`):
//!
//! ```text
//! <root>/<map>                         every map of ztunnel_common::maps (+ AYA_LOGS)
//! <root>/links/<program>               cgroup links: connect4, connect6, sockops_rekey, getsockopt,
//!                                      getpeername4, getpeername6, bind4, bind6
//! <root>/pod-links/<netns cookie>/tc_ingress  the TCX link inside each enrolled pod's netns
//! ```
//! Everything under the root is ours; nothing outside it is ever touched.

use std::{
    io,
    path::{Path, PathBuf},
};

use super::EbpfError;

/// `statfs.f_type` of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Paths of ztunnel's pins under one bpffs root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    /// A layout rooted at `root` (not created yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Pin path of a map.
    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Directory of the cgroup links.
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Pin path of a cgroup program's link.
    pub fn cgroup_link(&self, program: &str) -> PathBuf {
        self.links_dir().join(program)
    }

    /// Directory of the per-pod pins.
    pub fn pods_dir(&self) -> PathBuf {
        self.root.join("pod-links")
    }

    /// Directory of one pod's pins.
    pub fn pod_dir(&self, netns_cookie: u64) -> PathBuf {
        self.pods_dir().join(netns_cookie.to_string())
    }

    /// Pin path of one pod's TC ingress link.
    pub fn pod_tc_link(&self, netns_cookie: u64) -> PathBuf {
        self.pod_dir(netns_cookie).join("tc_ingress")
    }

    /// Checks that the root can hold pins: it (or, while it does not exist yet, its nearest
    /// existing ancestor) is a directory on a bpf filesystem that is mounted read-write and
    /// writable by us. Minimum kernel 4.4 (bpffs).
    pub fn check(&self) -> Result<(), BpffsProblem> {
        let mut existing = self.root.as_path();
        while !existing.exists() {
            existing = existing.parent().unwrap_or(Path::new("/"));
        }
        let checked = existing.to_owned();
        let inspect = |source| BpffsProblem::Inspect {
            checked: checked.clone(),
            source,
        };
        if !existing.is_dir() {
            return Err(BpffsProblem::NotDirectory { checked });
        }
        let stat = statfs(existing).map_err(inspect)?;
        if stat.f_type as i64 != BPF_FS_MAGIC {
            return Err(BpffsProblem::NotBpffs {
                filesystem: filesystem_name(stat.f_type as i64),
                checked,
            });
        }
        if read_only(existing).map_err(inspect)? {
            return Err(BpffsProblem::ReadOnly { checked });
        }
        access_writable(existing).map_err(|source| BpffsProblem::NotWritable {
            checked: checked.clone(),
            source,
        })
    }

    /// Creates the root and its subdirectories after [`PinLayout::check`].
    pub fn create(&self) -> Result<(), EbpfError> {
        self.check().map_err(|problem| EbpfError::Bpffs {
            root: self.root.clone(),
            problem,
        })?;
        for directory in [self.links_dir(), self.pods_dir()] {
            std::fs::create_dir_all(&directory).map_err(|source| EbpfError::Io {
                action: format!("create pin directory {}", directory.display()),
                source,
            })?;
        }
        Ok(())
    }
}

/// Why a bpffs root cannot hold ztunnel's pins.
#[derive(Debug, thiserror::Error)]
pub enum BpffsProblem {
    /// Not on a bpf filesystem (nothing mounted there, or another filesystem).
    #[error(
        "{checked} is on {filesystem}, not on a bpf filesystem (mount one: `mount -t bpf bpf /sys/fs/bpf`, or pass --bpffs-root)"
    )]
    NotBpffs {
        /// The directory that was examined (the root or its nearest existing ancestor).
        checked: PathBuf,
        /// What it is on instead.
        filesystem: String,
    },
    /// The bpffs is mounted read-only.
    #[error(
        "the bpf filesystem at {checked} is mounted read-only (remount it read-write, e.g. `mount -o remount,rw <mount point>`, or pass --bpffs-root)"
    )]
    ReadOnly {
        /// The directory that was examined.
        checked: PathBuf,
    },
    /// Mounted read-write, but we may not write there.
    #[error(
        "{checked} on the bpf filesystem is not writable: {source} (run as root with CAP_BPF, or pass --bpffs-root)"
    )]
    NotWritable {
        /// The directory that was examined.
        checked: PathBuf,
        /// The OS error of `access(W_OK)`.
        source: io::Error,
    },
    /// The path exists and is not a directory.
    #[error(
        "{checked} is not a directory (pass a directory on a bpf filesystem with --bpffs-root)"
    )]
    NotDirectory {
        /// The path that was examined.
        checked: PathBuf,
    },
    /// `statfs` failed.
    #[error("cannot examine {checked}: {source}")]
    Inspect {
        /// The directory that was examined.
        checked: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Whether `path` lives on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    Ok(statfs(path)?.f_type as i64 == BPF_FS_MAGIC)
}

fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))
}

fn statfs(path: &Path) -> io::Result<libc::statfs> {
    let path = c_path(path)?;
    // SAFETY: statfs writes into a zeroed struct we own; `path` is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat)
}

/// Whether the filesystem holding `path` is mounted read-only (`statvfs`, `ST_RDONLY`).
fn read_only(path: &Path) -> io::Result<bool> {
    let path = c_path(path)?;
    // SAFETY: statvfs writes into a zeroed struct we own; `path` is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_flag & libc::ST_RDONLY != 0)
}

fn access_writable(path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    // SAFETY: `path` is NUL-terminated and outlives the call.
    if unsafe { libc::access(path.as_ptr(), libc::W_OK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A readable name for a `statfs.f_type`.
pub(crate) fn filesystem_name(magic: i64) -> String {
    let name = match magic {
        0x0102_1994 => "tmpfs",
        0xef53 => "ext2/3/4",
        0x5846_5342 => "xfs",
        0x9123_683e => "btrfs",
        0x794c_7630 => "overlayfs",
        0x6265_6572 => "sysfs",
        0x9fa0 => "procfs",
        0x6367_7270 => "cgroup2",
        _ => return format!("a filesystem with magic {magic:#x}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_paths() {
        let layout = PinLayout::new("/sys/fs/bpf/zt");
        assert_eq!(layout.map("pods"), Path::new("/sys/fs/bpf/zt/pods"));
        assert_eq!(
            layout.cgroup_link("connect4"),
            Path::new("/sys/fs/bpf/zt/links/connect4")
        );
        assert_eq!(
            layout.pod_tc_link(42),
            Path::new("/sys/fs/bpf/zt/pod-links/42/tc_ingress")
        );
    }

    #[test]
    fn a_root_on_another_filesystem_is_refused_with_its_name() {
        let directory = std::env::temp_dir().join(format!("ztunnel-pins-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let layout = PinLayout::new(directory.join("not-yet/ztunnel"));
        let problem = layout.check().unwrap_err();
        let message = problem.to_string();
        assert!(
            matches!(problem, BpffsProblem::NotBpffs { .. }),
            "{message}"
        );
        assert!(
            message.contains(&directory.display().to_string()),
            "{message}"
        );
        assert!(message.contains("not on a bpf filesystem"), "{message}");
        let error = layout.create().unwrap_err().to_string();
        assert!(error.contains("not-yet/ztunnel"), "{error}");
        assert!(!directory.join("not-yet").exists(), "nothing was created");
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn a_file_is_not_a_root() {
        let file = std::env::temp_dir().join(format!("ztunnel-pins-file-{}", std::process::id()));
        std::fs::write(&file, b"").unwrap();
        let problem = PinLayout::new(&file).check().unwrap_err();
        assert!(
            matches!(problem, BpffsProblem::NotDirectory { .. }),
            "{problem}"
        );
        std::fs::remove_file(&file).unwrap();
    }

    #[test]
    fn filesystem_names() {
        assert_eq!(filesystem_name(0x0102_1994), "tmpfs");
        assert!(filesystem_name(0x1234).contains("0x1234"));
    }
}
