//! Reload on change: the file is polled, and a changed file that parses and checks out replaces
//! the state; one that does not is logged and the last good state stays in force.
//!
//! Polling the content (not inotify) also sees Kubernetes ConfigMap updates, which swap a
//! symlink rather than write the file, and costs one small read per interval.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use tokio::sync::watch;

use super::{ConfigError, parse};
use crate::{
    admin::Metrics,
    state::{State, StateError, StateHandle},
};

/// How often the file is checked by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The command-line flags for the configuration file; flatten into the daemon's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// The workloads/services/policies file (Istio ztunnel local-config shape), reloaded on change.
    #[arg(long = "config", value_name = "FILE")]
    pub config_file: PathBuf,
    /// How often the file is checked for changes, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_POLL_INTERVAL.as_millis() as u64)]
    pub config_poll_ms: u64,
}

impl ConfigArgs {
    /// The polling interval as a duration.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.config_poll_ms.max(1))
    }
}

/// The result of the latest reload attempt, for whoever waits on one (tests, the admin page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// Counts attempts, starting at 0 for the initial load.
    pub attempt: u64,
    /// `Ok(summary)` when applied, `Err(message)` when rejected.
    pub result: Result<String, String>,
}

/// Watches one configuration file and keeps a [`StateHandle`] up to date with it.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    state: StateHandle,
    last_seen: Mutex<Option<String>>,
    outcome: watch::Sender<ReloadOutcome>,
    metrics: Option<Metrics>,
}

/// A one-line description of a state, e.g. `3 workloads, 1 services, 2 policies`.
pub fn summary(state: &State) -> String {
    format!(
        "{} workloads, {} services, {} policies",
        state.workloads().count(),
        state.services().count(),
        state.policies().count()
    )
}

impl Reloader {
    /// Loads `path` (which must be valid: a daemon does not start on a bad file) into a new
    /// state handle, and returns the reloader that will keep it current.
    pub fn start(path: &Path) -> Result<Self, ConfigError> {
        let text = read(path)?;
        let state = build(&text, path)?;
        let applied = summary(&state);
        tracing::info!(path = %path.display(), config = %applied, "configuration loaded");
        let (outcome, _) = watch::channel(ReloadOutcome {
            attempt: 0,
            result: Ok(applied),
        });
        Ok(Self {
            path: path.to_owned(),
            state: StateHandle::new(state),
            last_seen: Mutex::new(Some(text)),
            outcome,
            metrics: None,
        })
    }

    /// Counts reload attempts in `metrics` (`ztunnel_config_reloads_total`).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The handle the rest of the proxy reads the state from.
    pub fn state(&self) -> StateHandle {
        self.state.clone()
    }

    /// Notified after every reload attempt.
    pub fn subscribe(&self) -> watch::Receiver<ReloadOutcome> {
        self.outcome.subscribe()
    }

    /// Re-reads the file if its content changed since the last look, and applies it if valid.
    /// Returns `None` when nothing changed.
    pub fn check_for_change(&self) -> Option<Result<String, ConfigError>> {
        let text = match read(&self.path) {
            Ok(text) => text,
            Err(error) => {
                // Reported once per distinct failure, not once per poll.
                let mut last_seen = self.lock_last_seen();
                if last_seen.is_some() {
                    *last_seen = None;
                    tracing::warn!(%error, "config file unreadable; keeping the last good configuration");
                    self.publish(Err(error.to_string()));
                }
                return None;
            }
        };
        {
            let mut last_seen = self.lock_last_seen();
            if last_seen.as_deref() == Some(text.as_str()) {
                return None;
            }
            *last_seen = Some(text.clone());
        }
        let result = build(&text, &self.path).map(|state| {
            let applied = summary(&state);
            self.state.replace(state);
            applied
        });
        match &result {
            Ok(applied) => {
                tracing::info!(path = %self.path.display(), config = %applied, "configuration reloaded")
            }
            Err(error) => tracing::error!(path = %self.path.display(), %error,
                "configuration rejected; the last good configuration stays in force"),
        }
        if let Some(metrics) = &self.metrics {
            metrics.config_reload(result.is_ok());
        }
        self.publish(
            result
                .as_ref()
                .map(Clone::clone)
                .map_err(ToString::to_string),
        );
        Some(result)
    }

    /// Polls the file every `interval` until the task is dropped or aborted.
    pub async fn run(self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            // The outcome is logged and published by the check itself.
            let _ = self.check_for_change();
        }
    }

    fn publish(&self, result: Result<String, String>) {
        self.outcome.send_modify(|outcome| {
            outcome.attempt += 1;
            outcome.result = result;
        });
    }

    fn lock_last_seen(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.last_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

fn build(text: &str, path: &Path) -> Result<State, ConfigError> {
    let origin = path.display().to_string();
    let config = parse(text, &origin)?;
    State::from_config(config).map_err(|source: StateError| ConfigError::Invalid { origin, source })
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    const ONE: &str = "workloads:\n- {name: a, namespace: ns, workloadIps: [198.18.0.1]}\n";
    const TWO: &str = "workloads:\n- {name: b, namespace: ns, workloadIps: [198.18.0.2]}\n";
    const UNSUPPORTED: &str =
        "workloads:\n- name: c\n  namespace: ns\n  applicationTunnel: {protocol: PROXY}\n";

    struct ConfigFile {
        _dir: tempfile::TempDir,
        path: PathBuf,
    }

    impl ConfigFile {
        fn new(text: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("ztunnel.yaml");
            let file = Self { _dir: dir, path };
            file.write(text);
            file
        }

        /// Replaces the file atomically, as a ConfigMap update does.
        fn write(&self, text: &str) {
            let staging = self.path.with_extension("new");
            std::fs::write(&staging, text).unwrap();
            std::fs::rename(&staging, &self.path).unwrap();
        }
    }

    fn serves(state: &StateHandle, ip: &str) -> bool {
        state
            .snapshot()
            .workload_by_ip(ip.parse::<IpAddr>().unwrap())
            .is_some()
    }

    #[test]
    fn a_change_takes_effect() {
        let file = ConfigFile::new(ONE);
        let reloader = Reloader::start(&file.path).unwrap();
        let state = reloader.state();
        assert!(serves(&state, "198.18.0.1"));
        assert!(
            reloader.check_for_change().is_none(),
            "unchanged file is not reloaded"
        );
        file.write(TWO);
        assert_eq!(
            reloader.check_for_change().unwrap().unwrap(),
            "1 workloads, 0 services, 0 policies"
        );
        assert!(serves(&state, "198.18.0.2") && !serves(&state, "198.18.0.1"));
    }

    #[test]
    fn a_broken_file_is_rejected_and_the_old_state_keeps_serving() {
        let file = ConfigFile::new(ONE);
        let metrics = Metrics::new();
        let reloader = Reloader::start(&file.path)
            .unwrap()
            .with_metrics(metrics.clone());
        let state = reloader.state();
        for broken in [
            "workloads: [",
            "workloads:\n- {namespace: ns, workloadIps: [bogus]}\n",
            UNSUPPORTED,
        ] {
            file.write(broken);
            let error = reloader.check_for_change().unwrap().unwrap_err();
            assert!(error.to_string().contains("ztunnel.yaml"), "{error}");
            assert!(
                serves(&state, "198.18.0.1"),
                "old state must stay after {broken:?}"
            );
        }
        std::fs::remove_file(&file.path).unwrap();
        assert!(reloader.check_for_change().is_none());
        assert!(
            serves(&state, "198.18.0.1"),
            "old state must stay when the file disappears"
        );
        file.write(TWO);
        assert!(reloader.check_for_change().unwrap().is_ok());
        assert!(serves(&state, "198.18.0.2"));
        let text = metrics.encode().unwrap();
        assert!(
            text.contains("ztunnel_config_reloads_total{result=\"rejected\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("ztunnel_config_reloads_total{result=\"applied\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn an_unsupported_field_is_named() {
        let file = ConfigFile::new(ONE);
        let reloader = Reloader::start(&file.path).unwrap();
        file.write(UNSUPPORTED);
        let error = reloader.check_for_change().unwrap().unwrap_err();
        assert!(
            matches!(&error, ConfigError::UnsupportedField { field, line: 4, .. } if field == "applicationTunnel"),
            "{error:?}"
        );
        assert!(error.to_string().contains("`applicationTunnel`"), "{error}");
    }

    #[test]
    fn a_bad_file_at_start_is_an_error() {
        let file = ConfigFile::new(UNSUPPORTED);
        let error = Reloader::start(&file.path).unwrap_err();
        assert!(error.to_string().contains("applicationTunnel"), "{error}");
    }

    /// Waits until the reloader has published attempt number `attempt`.
    async fn outcome(updates: &mut watch::Receiver<ReloadOutcome>, attempt: u64) -> ReloadOutcome {
        let wait = updates.wait_for(|outcome| outcome.attempt >= attempt);
        match tokio::time::timeout(Duration::from_secs(10), wait).await {
            Ok(Ok(outcome)) => outcome.clone(),
            other => panic!("reload attempt {attempt} not seen within 10s: {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_watcher_applies_changes_and_rejects_broken_files() {
        let file = ConfigFile::new(ONE);
        let reloader = Reloader::start(&file.path).unwrap();
        let state = reloader.state();
        let mut updates = reloader.subscribe();
        let watcher = tokio::spawn(reloader.run(Duration::from_millis(10)));

        file.write(TWO);
        assert!(outcome(&mut updates, 1).await.result.is_ok());
        assert!(serves(&state, "198.18.0.2"));

        file.write(UNSUPPORTED);
        let rejected = outcome(&mut updates, 2).await.result.unwrap_err();
        assert!(
            rejected.contains("applicationTunnel") && rejected.contains("line 4"),
            "{rejected}"
        );
        assert!(
            serves(&state, "198.18.0.2"),
            "the last good state stays in force"
        );
        watcher.abort();
    }
}
