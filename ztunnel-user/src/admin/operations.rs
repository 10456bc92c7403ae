//! Everything the daemon needs from configuration and operations in one call: the state from
//! the watched file, metrics, readiness, and the three servers.

use std::sync::Arc;

use tokio::task::JoinHandle;

use super::{
    AdminConfig, AdminError, AdminServers, AdminSources, CertificateInfo, Metrics, Readiness,
};
use crate::{
    config::{ConfigArgs, ConfigError, Reloader},
    state::StateHandle,
};

/// Why the operations side of the daemon cannot start.
#[derive(Debug, thiserror::Error)]
pub enum OperationsError {
    /// The configuration file is unusable at start (the daemon does not start on a bad file).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A server cannot start.
    #[error(transparent)]
    Admin(#[from] AdminError),
}

/// The running configuration watcher and operations servers. Dropping it stops both.
#[derive(Debug)]
pub struct Operations {
    /// The workload/service/policy store, kept current by the watcher.
    pub state: StateHandle,
    /// The process's metrics, also served on `/metrics`.
    pub metrics: Metrics,
    /// Readiness: register startup tasks, then call `startup_complete`.
    pub readiness: Readiness,
    /// The three servers (their bound addresses are public fields).
    pub servers: AdminServers,
    watcher: JoinHandle<()>,
}

impl Operations {
    /// Loads the configuration file, starts watching it on the current Tokio runtime and starts
    /// the admin, metrics and readiness servers. `certificates` comes from the identity module.
    pub fn start(
        config: &ConfigArgs,
        admin: &AdminConfig,
        certificates: Arc<dyn CertificateInfo>,
    ) -> Result<Self, OperationsError> {
        let metrics = Metrics::new();
        let reloader = Reloader::start(&config.config_file)?.with_metrics(metrics.clone());
        let state = reloader.state();
        let readiness = Readiness::new();
        let servers = AdminServers::start(
            admin,
            AdminSources {
                state: state.clone(),
                metrics: metrics.clone(),
                readiness: readiness.clone(),
                certificates,
                reload: Some(reloader.subscribe()),
                xds: None,
            },
        )?;
        let watcher = tokio::spawn(reloader.run(config.poll_interval()));
        Ok(Self {
            state,
            metrics,
            readiness,
            servers,
            watcher,
        })
    }
}

impl Drop for Operations {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Duration};

    use super::*;
    use crate::admin::no_certificates;

    #[tokio::test]
    async fn starts_everything_from_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ztunnel.yaml");
        std::fs::write(
            &path,
            "workloads:\n- {name: a, namespace: ns, workloadIps: [198.18.0.1]}\n",
        )
        .unwrap();
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let admin = AdminConfig {
            admin_address: loopback,
            metrics_address: loopback,
            readiness_address: loopback,
        };
        let config = ConfigArgs {
            config_file: path.clone(),
            config_poll_ms: 10,
        };
        let operations = Operations::start(&config, &admin, no_certificates()).unwrap();
        assert!(
            operations
                .state
                .snapshot()
                .workload_by_ip("198.18.0.1".parse().unwrap())
                .is_some()
        );
        assert_ne!(operations.servers.admin_address.port(), 0);

        std::fs::write(
            &path,
            "workloads:\n- {name: b, namespace: ns, workloadIps: [198.18.0.2]}\n",
        )
        .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while operations
            .state
            .snapshot()
            .workload_by_ip("198.18.0.2".parse().unwrap())
            .is_none()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the watcher did not apply the change within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_bad_file_at_start_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ztunnel.yaml");
        std::fs::write(&path, "workloads:\n- {name: a, namespace: ns, bogus: 1}\n").unwrap();
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let admin = AdminConfig {
            admin_address: loopback,
            metrics_address: loopback,
            readiness_address: loopback,
        };
        let config = ConfigArgs {
            config_file: path,
            config_poll_ms: 10,
        };
        let error = Operations::start(&config, &admin, no_certificates()).unwrap_err();
        assert!(error.to_string().contains("`bogus`"), "{error}");
    }
}
