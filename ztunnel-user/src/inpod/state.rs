//! The durable enrolled set: `<run dir>/enrolled-pods.json`, so a restarted daemon re-opens
//! listeners for every enrolled pod. Written atomically (temp file + rename) under an `flock` on
//! `<run dir>/lock`, so the CLI, the daemon and (later) the CNI plugin can all update it.

use std::{
    fs::File,
    io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::capture::CaptureMode;

/// Default run directory (`--run-dir`).
pub const DEFAULT_RUN_DIR: &str = "/run/ztunnel";
const STATE_FILE: &str = "enrolled-pods.json";
const LOCK_FILE: &str = "lock";
const DAEMON_LOCK_FILE: &str = "daemon.lock";

/// One enrolled pod as recorded on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrolledPod {
    /// Kubernetes pod name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Path of the pod's netns file.
    pub netns: PathBuf,
    /// The pod's IPs.
    pub ips: Vec<IpAddr>,
    /// Interface inside the pod netns carrying the TC ingress program.
    pub interface: String,
    /// Its index in the pod netns.
    pub ifindex: u32,
    /// Cookie of the pod's netns.
    pub netns_cookie: u64,
    /// Slot in the `stats` map.
    pub index: u32,
    /// How its traffic is captured (records written before iptables capture existed: eBPF).
    #[serde(default)]
    pub capture: CaptureMode,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolledSet {
    /// Every enrolled pod.
    pub pods: Vec<EnrolledPod>,
    /// The node's capture mode, set by the daemon at start; pods enrolled without the daemon
    /// (CLI, CNI plugin) get this kind of capture.
    #[serde(default)]
    pub capture: CaptureMode,
}

impl EnrolledSet {
    /// The smallest stats index no pod uses.
    pub fn free_index(&self) -> u32 {
        (0..)
            .find(|index| self.pods.iter().all(|pod| pod.index != *index))
            .unwrap_or(0)
    }
}

/// An exclusive hold on the run dir's state; released on drop.
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// Creates the run dir if needed and takes the lock (blocks while another holder works).
    pub fn acquire(run_dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(run_dir)?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(run_dir.join(LOCK_FILE))?;
        file.lock()?;
        Ok(Self {
            _file: file,
            path: run_dir.join(STATE_FILE),
        })
    }

    /// Reads the enrolled set (empty if the file does not exist yet).
    pub fn load(&self) -> io::Result<EnrolledSet> {
        read(&self.path)
    }

    /// Replaces the enrolled set atomically.
    pub fn save(&self, set: &EnrolledSet) -> io::Result<()> {
        let temporary = self.path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(set).map_err(io::Error::other)?;
        std::fs::write(&temporary, text)?;
        std::fs::rename(&temporary, &self.path)
    }
}

/// Proof that this process is the only daemon using a run dir; released when dropped (or when
/// the process dies, so a crashed daemon never blocks its successor).
pub struct DaemonLock {
    _file: File,
}

impl DaemonLock {
    /// Takes `<run dir>/daemon.lock` without waiting; `WouldBlock` if another daemon holds it.
    pub fn acquire(run_dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(run_dir)?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(run_dir.join(DAEMON_LOCK_FILE))?;
        file.try_lock().map_err(|error| match error {
            std::fs::TryLockError::WouldBlock => io::Error::from(io::ErrorKind::WouldBlock),
            std::fs::TryLockError::Error(error) => error,
        })?;
        Ok(Self { _file: file })
    }
}

/// Reads the enrolled set without locking (a consistent snapshot thanks to atomic renames).
pub fn read_enrolled(run_dir: &Path) -> io::Result<EnrolledSet> {
    read(&run_dir.join(STATE_FILE))
}

fn read(path: &Path) -> io::Result<EnrolledSet> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {error} (fix or remove the file)", path.display()),
            )
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(EnrolledSet::default()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(index: u32) -> EnrolledPod {
        EnrolledPod {
            name: format!("p{index}"),
            namespace: "default".into(),
            netns: "/var/run/netns/x".into(),
            ips: vec!["198.18.0.10".parse().unwrap()],
            interface: "eth0".into(),
            ifindex: 2,
            netns_cookie: 4096 + u64::from(index),
            index,
            capture: CaptureMode::Ebpf,
        }
    }

    #[test]
    fn only_one_daemon_per_run_dir() {
        let dir =
            std::env::temp_dir().join(format!("ztunnel-daemon-lock-test-{}", std::process::id()));
        let first = DaemonLock::acquire(&dir).unwrap();
        assert_eq!(
            DaemonLock::acquire(&dir).err().map(|e| e.kind()),
            Some(io::ErrorKind::WouldBlock)
        );
        drop(first);
        assert!(DaemonLock::acquire(&dir).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn free_index_fills_gaps() {
        let set = EnrolledSet {
            pods: vec![pod(0), pod(2)],
            ..EnrolledSet::default()
        };
        assert_eq!(set.free_index(), 1);
        assert_eq!(EnrolledSet::default().free_index(), 0);
    }

    #[test]
    fn state_round_trips_and_rejects_garbage() {
        let dir = std::env::temp_dir().join(format!("ztunnel-state-test-{}", std::process::id()));
        let lock = StateLock::acquire(&dir).unwrap();
        assert_eq!(lock.load().unwrap(), EnrolledSet::default());
        let set = EnrolledSet {
            pods: vec![pod(0)],
            capture: CaptureMode::Iptables,
        };
        lock.save(&set).unwrap();
        assert_eq!(read_enrolled(&dir).unwrap(), set);
        std::fs::write(dir.join(STATE_FILE), b"{not json").unwrap();
        let error = read_enrolled(&dir).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        drop(lock);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
