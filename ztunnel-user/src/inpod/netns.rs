//! Entering a pod's network namespace just long enough to make a socket or attach a program.
//!
//! Each entry runs on a fresh OS thread that calls `setns(2)` and then exits, so no tokio worker
//! thread ever changes namespace and nothing has to be restored. File descriptors are shared by
//! all threads, so a socket made there stays usable (and stays in the pod's netns) afterwards.

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
                    // SAFETY: the fd is an open namespace file owned by `self`; setns only
                    // changes this short-lived thread's network namespace.
                    let rc = unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    work()
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("thread inside the pod netns panicked")))
        })
    }

    /// The namespace's cookie, the key of the `pods` map. Minimum kernel 5.14.
    pub fn cookie(&self) -> io::Result<u64> {
        self.run(current_netns_cookie)
    }
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
