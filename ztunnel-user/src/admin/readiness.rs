//! Readiness: `/healthz/ready` answers 200 only once every startup task the daemon registered
//! has said it is done, and 503 again once draining starts.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

/// Shared readiness; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    inner: Arc<Mutex<ReadinessState>>,
}

#[derive(Debug, Default)]
struct ReadinessState {
    pending: BTreeSet<String>,
    started: bool,
    draining: bool,
}

/// Holds readiness back until [`ReadinessBlocker::release`] is called. Dropping it without
/// releasing keeps the daemon unready: a task that died did not become ready.
#[derive(Debug)]
#[must_use = "readiness stays blocked until release() is called"]
pub struct ReadinessBlocker {
    readiness: Readiness,
    task: String,
}

impl Readiness {
    /// Not ready until [`Readiness::startup_complete`] and every blocker is released.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReadinessState> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a startup task (e.g. `"ebpf programs attached"`) that must finish first.
    pub fn block(&self, task: &str) -> ReadinessBlocker {
        self.lock().pending.insert(task.to_owned());
        ReadinessBlocker {
            readiness: self.clone(),
            task: task.to_owned(),
        }
    }

    /// Says every startup task has been registered; readiness now depends on them alone.
    pub fn startup_complete(&self) {
        self.lock().started = true;
    }

    /// Marks the daemon as draining: not ready from now on.
    pub fn set_draining(&self) {
        self.lock().draining = true;
    }

    /// Whether `/healthz/ready` answers 200.
    pub fn is_ready(&self) -> bool {
        self.not_ready_because().is_none()
    }

    /// Why the daemon is not ready, or `None` when it is.
    pub fn not_ready_because(&self) -> Option<String> {
        let state = self.lock();
        if state.draining {
            Some("draining".to_owned())
        } else if !state.started {
            Some("starting".to_owned())
        } else if !state.pending.is_empty() {
            let pending: Vec<&str> = state.pending.iter().map(String::as_str).collect();
            Some(format!("waiting for: {}", pending.join(", ")))
        } else {
            None
        }
    }
}

impl ReadinessBlocker {
    /// The task is done.
    pub fn release(self) {
        tracing::info!(task = %self.task, "startup task ready");
        self.readiness.lock().pending.remove(&self.task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_after_startup_and_every_task() {
        let readiness = Readiness::new();
        let maps = readiness.block("maps pinned");
        let listeners = readiness.block("listeners");
        assert_eq!(readiness.not_ready_because().as_deref(), Some("starting"));
        readiness.startup_complete();
        assert_eq!(
            readiness.not_ready_because().as_deref(),
            Some("waiting for: listeners, maps pinned")
        );
        maps.release();
        assert!(!readiness.is_ready());
        listeners.release();
        assert!(readiness.is_ready());
        readiness.set_draining();
        assert_eq!(readiness.not_ready_because().as_deref(), Some("draining"));
    }

    #[test]
    fn a_dropped_blocker_keeps_the_daemon_unready() {
        let readiness = Readiness::new();
        drop(readiness.block("certificates"));
        readiness.startup_complete();
        assert!(!readiness.is_ready());
    }
}
