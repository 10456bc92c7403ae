//! Whether a proxy that connects can work with our hooks. The `cgroup/getsockopt` program that
//! answers `SO_ORIGINAL_DST` runs only for processes in the cgroup it is attached to (or below);
//! a proxy outside it would get no original destination for any connection. So the agent checks
//! once, when the proxy connects, and refuses it with both cgroups named — instead of the proxy
//! failing every connection with a warning.

use std::path::{Path, PathBuf};

use crate::{ebpf::cgroup::cgroup2_mount, inpod::capture::CaptureMode, zds::transport::SeqPacket};

/// The check, set up once at start.
#[derive(Debug, Clone)]
pub struct Admission {
    /// The attach cgroup relative to the cgroup2 root (`/` for the root), when eBPF capture is
    /// in force and the cgroup2 mount was found.
    attach: Option<(PathBuf, PathBuf)>,
}

impl Admission {
    /// Checks proxies against `cgroup` under eBPF capture; admits every proxy under iptables
    /// capture (conntrack answers `SO_ORIGINAL_DST` for any process).
    pub fn new(mode: CaptureMode, cgroup: &Path) -> Self {
        let attach = match mode {
            CaptureMode::Iptables => None,
            CaptureMode::Ebpf => match relative_to_cgroup2_root(cgroup) {
                Ok(relative) => Some((cgroup.to_owned(), relative)),
                Err(error) => {
                    tracing::warn!(cgroup = %cgroup.display(), %error, "cannot place the attach cgroup in the cgroup2 hierarchy; connecting proxies are not checked");
                    None
                }
            },
        };
        Self { attach }
    }

    /// `Ok` if the proxy at the other end of `connection` runs in the attach cgroup or below it.
    pub fn admit(&self, connection: &SeqPacket) -> Result<(), String> {
        let Some((attach_path, attach)) = &self.attach else {
            return Ok(());
        };
        let pid = connection
            .peer_pid()
            .map_err(|error| format!("cannot tell which process connected: {error}"))?;
        let proxy = process_cgroup(pid)
            .map_err(|error| format!("cannot read the cgroup of proxy pid {pid}: {error}"))?;
        if proxy.starts_with(attach) {
            return Ok(());
        }
        Err(format!(
            "proxy pid {pid} runs in cgroup {} (cgroup2 path), outside {} where the capture programs are attached ({}): our getsockopt hook cannot answer SO_ORIGINAL_DST for it; run the proxy in that cgroup or below it, or attach with --cgroup to a cgroup that contains it",
            proxy.display(),
            attach.display(),
            attach_path.display()
        ))
    }
}

/// The cgroup2 path of process `pid` (`0::/path` in `/proc/<pid>/cgroup`).
fn process_cgroup(pid: i32) -> std::io::Result<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(PathBuf::from)
        .ok_or_else(|| std::io::Error::other("no cgroup2 entry (0::) in its /proc/<pid>/cgroup"))
}

/// `cgroup` as a path inside the cgroup2 hierarchy, whose mount [`cgroup2_mount`] finds.
fn relative_to_cgroup2_root(cgroup: &Path) -> std::io::Result<PathBuf> {
    let root = cgroup2_mount().map_err(std::io::Error::other)?;
    let cgroup = cgroup.canonicalize()?;
    cgroup
        .strip_prefix(&root)
        .map(|relative| Path::new("/").join(relative))
        .map_err(|_| {
            std::io::Error::other(format!(
                "{} is not under the cgroup2 mount {}",
                cgroup.display(),
                root.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_found_in_its_own_cgroup() {
        let own = process_cgroup(std::process::id() as i32).expect("own cgroup");
        assert!(own.is_absolute(), "{}", own.display());
    }

    #[tokio::test]
    async fn a_proxy_outside_the_attach_cgroup_is_refused_with_both_named() {
        let (agent_end, _proxy_end) = SeqPacket::pair().expect("pair");
        let inside = Admission {
            attach: Some((PathBuf::from("/sys/fs/cgroup"), PathBuf::from("/"))),
        };
        assert_eq!(
            inside.admit(&agent_end),
            Ok(()),
            "the root holds every process"
        );
        let outside = Admission {
            attach: Some((
                PathBuf::from("/sys/fs/cgroup/elsewhere"),
                PathBuf::from("/no-such-cgroup-for-this-test"),
            )),
        };
        let reason = outside
            .admit(&agent_end)
            .expect_err("admitted from outside");
        println!("{reason}");
        assert!(reason.contains("/no-such-cgroup-for-this-test"), "{reason}");
        assert!(reason.contains("outside"), "{reason}");
    }
}
