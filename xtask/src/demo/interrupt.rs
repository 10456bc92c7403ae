//! Ctrl-C handling and the demo's console. SIGINT only sets a flag; the demo checks it between
//! steps and returns, so the cluster is dropped (and torn down) normally.

use std::{
    fs::File,
    io::Write,
    os::fd::FromRawFd,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::Context;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Replaces the default SIGINT action (exit without running `Drop`) with setting a flag.
pub fn install_sigint_flag() -> anyhow::Result<()> {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe; the sigaction
    // struct is fully initialised (zeroed, then the handler and an empty mask are set).
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut())
    };
    anyhow::ensure!(
        rc == 0,
        "cannot install the Ctrl-C handler: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Whether Ctrl-C was pressed.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails if Ctrl-C was pressed: called between steps so the demo unwinds and tears down.
pub fn check() -> anyhow::Result<()> {
    anyhow::ensure!(!interrupted(), "interrupted by Ctrl-C");
    Ok(())
}

/// The terminal the demo writes to, while the harness's own detail (every process it starts,
/// every namespace it makes) goes to a log file: standard output is re-pointed at the file.
pub struct Console {
    terminal: File,
}

impl Console {
    /// Keeps a handle on the current standard output and sends fd 1 to `detail_log`.
    pub fn divert_stdout(detail_log: &Path) -> anyhow::Result<Self> {
        let log = File::create(detail_log)
            .with_context(|| format!("cannot create {}", detail_log.display()))?;
        std::io::stdout().flush()?;
        // SAFETY: dup and dup2 on file descriptors this process owns; the duplicate is owned by
        // the returned File from here on, and `log` stays open until dup2 has copied it.
        let terminal = unsafe {
            let copy = libc::dup(libc::STDOUT_FILENO);
            anyhow::ensure!(
                copy >= 0,
                "cannot dup stdout: {}",
                std::io::Error::last_os_error()
            );
            let terminal = File::from_raw_fd(copy);
            anyhow::ensure!(
                libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&log), libc::STDOUT_FILENO) >= 0,
                "cannot redirect stdout: {}",
                std::io::Error::last_os_error()
            );
            terminal
        };
        Ok(Self { terminal })
    }

    /// Writes `text` and a newline to the terminal.
    pub fn line(&self, text: &str) {
        let mut terminal = &self.terminal;
        let _ = writeln!(terminal, "{text}");
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = std::io::stdout().flush();
        // SAFETY: puts the terminal back on fd 1; both descriptors are open.
        unsafe {
            libc::dup2(
                std::os::fd::AsRawFd::as_raw_fd(&self.terminal),
                libc::STDOUT_FILENO,
            );
        }
    }
}
