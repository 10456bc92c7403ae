//! Where the cgroup programs attach: a directory of the cgroup-v2 hierarchy, by default the
//! hierarchy's mount point as `/proc/mounts` lists it (`/sys/fs/cgroup` on a unified host,
//! `/sys/fs/cgroup/unified` on a hybrid one).

use std::{
    io,
    path::{Path, PathBuf},
};

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};

/// The mount table the cgroup2 mount is looked up in.
pub const PROC_MOUNTS: &str = "/proc/mounts";

/// Why no cgroup-v2 directory could be settled on.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The mount table is unreadable.
    #[error("cannot read {PROC_MOUNTS} to find the cgroup2 mount: {0}")]
    Mounts(io::Error),
    /// Nothing of type cgroup2 is mounted.
    #[error(
        "no cgroup2 filesystem is mounted ({PROC_MOUNTS} lists none): mount one (`mount -t cgroup2 none /sys/fs/cgroup/unified`) or pass --cgroup"
    )]
    NotMounted,
    /// The directory given is not in the cgroup-v2 hierarchy.
    #[error("--cgroup {}: {problem}; {where_cgroup2_is}", path.display())]
    NotCgroup2 {
        /// The directory given.
        path: PathBuf,
        /// What it is instead.
        problem: String,
        /// Where cgroup2 is mounted, and what to pass.
        where_cgroup2_is: String,
    },
}

/// The first cgroup2 mount point in [`PROC_MOUNTS`].
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let mounts = std::fs::read_to_string(PROC_MOUNTS).map_err(CgroupError::Mounts)?;
    cgroup2_mount_in(&mounts).ok_or(CgroupError::NotMounted)
}

/// The cgroup directory for the daemon's `--cgroup`: the one given, if it is in the cgroup-v2
/// hierarchy, else the cgroup2 mount point. The error names where cgroup2 is mounted.
pub fn daemon_cgroup(requested: Option<&Path>) -> Result<PathBuf, CgroupError> {
    let Some(path) = requested else {
        return cgroup2_mount();
    };
    let problem = match statfs(path) {
        Ok(stat) if stat.filesystem_type() == CGROUP2_SUPER_MAGIC => return Ok(path.to_owned()),
        Ok(stat) => format!(
            "not a cgroup-v2 directory (it is on {})",
            super::pins::filesystem_name(stat.filesystem_type().0)
        ),
        Err(errno) => format!("cannot inspect it: {errno}"),
    };
    let where_cgroup2_is = match cgroup2_mount() {
        Ok(mount) => format!(
            "cgroup2 is mounted at {0}: pass --cgroup {0} (or a directory under it), or leave --cgroup out",
            mount.display()
        ),
        Err(error) => error.to_string(),
    };
    Err(CgroupError::NotCgroup2 {
        path: path.to_owned(),
        problem,
        where_cgroup2_is,
    })
}

/// The first cgroup2 mount point in a mount table in `/proc/mounts` form.
pub fn cgroup2_mount_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(unescape_mount_path(target)))
    })
}

/// `/proc/mounts` writes space, tab, newline and backslash in paths as octal escapes (`\040`).
fn unescape_mount_path(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(backslash) = rest.find('\\') {
        out.push_str(&rest[..backslash]);
        let escape = rest.get(backslash + 1..backslash + 4);
        match escape.and_then(|digits| u8::from_str_radix(digits, 8).ok()) {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[backslash + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[backslash + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0\n\
        tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0\n\
        cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n\
        cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n";

    #[test]
    fn finds_the_unified_hierarchy_of_a_hybrid_host() {
        let found = cgroup2_mount_in(HYBRID);
        println!("hybrid mount table -> {found:?}");
        assert_eq!(found, Some(PathBuf::from("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn finds_a_unified_host_and_decodes_escapes() {
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        let escaped = "none /mnt/my\\040cgroups cgroup2 rw 0 0\n";
        let (plain, decoded) = (cgroup2_mount_in(unified), cgroup2_mount_in(escaped));
        println!("unified -> {plain:?}; escaped -> {decoded:?}");
        assert_eq!(plain, Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(decoded, Some(PathBuf::from("/mnt/my cgroups")));
    }

    #[test]
    fn no_cgroup2_line_is_none() {
        let v1_only = "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n";
        let found = cgroup2_mount_in(v1_only);
        println!("cgroup v1 only -> {found:?}");
        assert_eq!(found, None);
    }

    #[test]
    fn a_directory_outside_cgroup2_is_refused_naming_the_mount() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let error = daemon_cgroup(Some(directory.path())).expect_err("a tmp dir is no cgroup");
        println!("{error}");
        assert!(matches!(error, CgroupError::NotCgroup2 { .. }));
        match cgroup2_mount() {
            Ok(mount) => assert!(error.to_string().contains(&mount.display().to_string())),
            Err(_) => assert!(error.to_string().contains(PROC_MOUNTS)),
        }
    }
}
