//! Waiting for a condition with a deadline (never sleeping to synchronise).

use std::time::{Duration, Instant};

/// How long a test waits for anything by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls `probe` until it returns `Some`, or fails after `timeout` naming `what` was awaited.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
