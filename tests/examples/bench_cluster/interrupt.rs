//! Ctrl-C and SIGTERM stop the benchmark between measurements instead of killing it, so the
//! clusters' `Drop` still removes their namespaces, cgroups, mounts and processes.
//!
//! With the default action the driver died at once and left all of that behind. Ctrl-C also
//! reaches the measurement in progress (iperf3 or the load generator, in the same process
//! group), which then fails, so the stop is immediate in practice; a SIGTERM sent to the
//! driver alone takes effect when the current measurement ends.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_signal(_signal: libc::c_int) {
    // Storing to an atomic is async-signal-safe; everything else waits for `check`.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Replaces the default action of SIGINT and SIGTERM for this process (children started
/// afterwards get the default back when they exec).
pub fn install() -> anyhow::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let handler = note_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: the handler only stores to an atomic.
        let previous = unsafe { libc::signal(signal, handler) };
        anyhow::ensure!(
            previous != libc::SIG_ERR,
            "cannot handle signal {signal}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Fails once a signal has arrived, so the caller returns and the clusters are torn down.
pub fn check() -> anyhow::Result<()> {
    anyhow::ensure!(
        !INTERRUPTED.load(Ordering::SeqCst),
        "interrupted: stopping the benchmark and removing its clusters"
    );
    Ok(())
}
