//! Idle detection for the copy loops: both directions of a connection touch one [`Activity`];
//! a watchdog beside them ends the connection once nothing moved for the idle timeout.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::time::Instant;

/// When a connection last moved a byte; both copy directions touch it, a watchdog reads it.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    /// Milliseconds after `start` of the last byte moved.
    last: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    /// Activity starting now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// Bytes moved just now.
    pub fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.fetch_max(now, Ordering::Relaxed);
    }

    /// Returns once nothing has moved for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Why a copy loop ended: nothing moved for the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("idle timeout: no bytes in either direction for {0:?}")]
pub struct IdleTimeout(pub Duration);

/// The error a copy loop ends with when [`Activity::idle_for`] fired.
pub fn idle_error(timeout: Duration) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, IdleTimeout(timeout))
}

/// Whether `error` is the one [`idle_error`] made.
pub fn is_idle_timeout(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<IdleTimeout>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_fires_only_after_a_quiet_period() {
        let activity = Activity::new();
        let timeout = Duration::from_secs(10);
        tokio::time::sleep(Duration::from_secs(6)).await;
        activity.touch();
        activity.idle_for(timeout).await;
        // Paused (virtual) time: the watchdog wakes at the deadline computed from the last touch,
        // 6 s + 10 s after the start, never at the first 10 s mark.
        assert_eq!(activity.start.elapsed(), Duration::from_secs(16));
    }
}
