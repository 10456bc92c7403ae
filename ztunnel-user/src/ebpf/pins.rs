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

    /// Creates the root and its subdirectories after checking they are on a bpffs.
    pub fn create(&self) -> io::Result<()> {
        let mut existing = self.root.as_path();
        while !existing.exists() {
            existing = existing.parent().unwrap_or(Path::new("/"));
        }
        if !is_bpffs(existing)? {
            return Err(io::Error::other(format!(
                "{} is not on a bpf filesystem (mount one: `mount -t bpf bpf /sys/fs/bpf`, or pass --bpffs-root)",
                existing.display()
            )));
        }
        std::fs::create_dir_all(self.links_dir())?;
        std::fs::create_dir_all(self.pods_dir())
    }
}

/// Whether `path` lives on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    let path = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    // SAFETY: statfs writes into a zeroed struct we own; `path` is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_type as i64 == BPF_FS_MAGIC)
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
}
