//! Entering a pod's network namespace just long enough to make a socket or attach a program.
//!
//! Two ways in, both relying on file descriptors being shared by all threads, so a socket made
//! inside stays usable (and stays in the pod's netns) afterwards:
//! - [`Netns::run`] (attaching, routing, iptables, sysctls, listeners) runs on a fresh OS thread
//!   that calls `setns(2)` and exits, so nothing has to be restored.
//! - [`Netns::run_here`] (the sockets every connection needs) switches the calling thread in and
//!   back. A fresh thread costs ~80 µs per socket on the test machine against ~11 µs for the two
//!   `setns` calls, and the per-connection profile of `cargo xtask bench` showed it.

use std::{
    fs::File,
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

/// `SO_NETNS_COOKIE` (include/uapi/asm-generic/socket.h). Minimum kernel 5.14.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// An open handle on a network namespace (e.g. `/var/run/netns/<name>` or `/proc/<pid>/ns/net`).
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    file: File,
}

impl Netns {
    /// Opens the namespace file at `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    /// A namespace received as a descriptor (ZDS); `label` names it in logs and errors.
    pub fn from_fd(fd: std::os::fd::OwnedFd, label: PathBuf) -> Self {
        Self {
            path: label,
            file: File::from(fd),
        }
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` on a new thread inside this namespace and returns its result.
    /// Needs `CAP_SYS_ADMIN`. Minimum kernel 3.0 (`setns`).
    pub fn run<T: Send>(&self, work: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // Only this short-lived thread changes namespace.
                    enter(&self.file)?;
                    work()
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("thread inside the pod netns panicked")))
        })
    }

    /// Runs `work` on the calling thread inside this namespace, then returns the thread to the
    /// namespace it was in (kept open per thread). `work` must be short and must not block or
    /// yield: it runs on a tokio worker, and nothing else runs on that thread meanwhile. If the
    /// thread cannot go back, the process aborts rather than let a worker thread make later
    /// sockets in a pod's namespace. Needs `CAP_SYS_ADMIN`. Minimum kernel 3.0 (`setns`).
    pub fn run_here<T>(&self, work: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        HOME.with(|home| {
            let home = match home.get() {
                Some(home) => home,
                None => {
                    let opened = File::open("/proc/thread-self/ns/net")?;
                    home.get_or_init(|| opened)
                }
            };
            // Only the calling thread changes namespace, and `GoHome` changes it back.
            enter(&self.file)?;
            let _back = GoHome(home);
            work()
        })
    }

    /// The addresses of the namespace's interfaces, loopback and link-local ones left out: a
    /// pod's own IPs, as its primary CNI plugin configured them.
    pub fn addresses(&self) -> io::Result<Vec<std::net::IpAddr>> {
        self.run(|| {
            let mut addresses = Vec::new();
            for interface in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
                let Some(address) = interface.address else {
                    continue;
                };
                let ip = if let Some(v4) = address.as_sockaddr_in() {
                    std::net::IpAddr::V4(v4.ip())
                } else if let Some(v6) = address.as_sockaddr_in6() {
                    std::net::IpAddr::V6(v6.ip())
                } else {
                    continue;
                };
                let link_local = match ip {
                    std::net::IpAddr::V4(v4) => v4.is_link_local(),
                    std::net::IpAddr::V6(v6) => v6.is_unicast_link_local(),
                };
                if !ip.is_loopback() && !link_local && !addresses.contains(&ip) {
                    addresses.push(ip);
                }
            }
            Ok(addresses)
        })
    }

    /// The namespace's cookie, the key of the `pods` map. Minimum kernel 5.14.
    pub fn cookie(&self) -> io::Result<u64> {
        self.run(current_netns_cookie)
    }
}

thread_local! {
    /// The network namespace each thread lives in, for [`Netns::run_here`] to go back to.
    static HOME: std::cell::OnceCell<File> = const { std::cell::OnceCell::new() };
}

impl std::os::fd::AsFd for Netns {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Puts the thread back in its own namespace when [`Netns::run_here`]'s work ends, also when it
/// unwinds.
struct GoHome<'a>(&'a File);

impl Drop for GoHome<'_> {
    fn drop(&mut self) {
        if let Err(error) = enter(self.0) {
            tracing::error!(%error, "cannot return a thread to the daemon's own network namespace; aborting");
            std::process::abort();
        }
    }
}

/// Moves the calling thread into the network namespace `file` refers to (`setns(2)`).
/// Needs `CAP_SYS_ADMIN`. Minimum kernel 3.0.
fn enter(file: &File) -> io::Result<()> {
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// The cookie of the calling thread's network namespace.
pub fn current_netns_cookie() -> io::Result<u64> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    let mut cookie: u64 = 0;
    let mut length = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid socket fd; `cookie` and `length` are live, correctly sized out-parameters.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut length,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh, unnamed network namespace, alive as long as the returned handle (needs root).
    fn scratch_netns() -> Netns {
        std::thread::spawn(|| {
            // SAFETY: unshare only moves this short-lived thread into a new network namespace.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET) failed: {} (this test needs root / CAP_SYS_ADMIN)",
                io::Error::last_os_error()
            );
            Netns::open(Path::new("/proc/thread-self/ns/net")).expect("open the new netns")
        })
        .join()
        .expect("thread making the scratch netns")
    }

    #[test]
    fn run_here_enters_the_namespace_and_comes_back() {
        let pod = scratch_netns();
        let pod_cookie = pod.cookie().expect("cookie via a fresh thread");
        let home = current_netns_cookie().expect("own cookie");
        assert_ne!(pod_cookie, home, "the scratch netns must differ from ours");
        for _ in 0..3 {
            let inside = pod.run_here(current_netns_cookie).expect("run_here");
            assert_eq!(inside, pod_cookie, "work ran in the pod's netns");
            assert_eq!(
                current_netns_cookie().expect("own cookie"),
                home,
                "thread is back home"
            );
        }
        let failed: io::Result<()> = pod.run_here(|| Err(io::Error::other("work failed")));
        assert!(failed.is_err());
        assert_eq!(
            current_netns_cookie().expect("own cookie"),
            home,
            "back home after an error"
        );
    }
}
