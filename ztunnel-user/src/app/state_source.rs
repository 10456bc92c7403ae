//! Where the proxy's workloads, services and policies come from: istiod over xDS
//! (`--xds-address`), the watched configuration file (`--config`), or nothing (an empty mesh).

use tokio::sync::watch;

use super::{AppError, ProxyArgs};
use crate::{
    admin::{Metrics, Readiness},
    config::{ReloadOutcome, reload::Reloader},
    state::StateHandle,
    xds::{XdsClient, XdsStatus},
};

/// The state handle every part of the proxy reads, and what the admin page reports about its
/// source.
pub struct StateSource {
    /// The state in force.
    pub state: StateHandle,
    /// Reload outcomes, when the state comes from a file.
    pub reload: Option<watch::Receiver<ReloadOutcome>>,
    /// The xDS client's status, when the state comes from istiod.
    pub xds: Option<watch::Receiver<XdsStatus>>,
}

/// Starts the source the flags ask for. With xDS, readiness waits for the first full push
/// (every subscribed type answered once); until then the mesh is empty.
pub fn start(
    args: &ProxyArgs,
    metrics: &Metrics,
    readiness: &Readiness,
) -> Result<StateSource, AppError> {
    if let Some(config) = args.xds.client_config()? {
        tracing::info!(address = %config.address.text, node_id = %config.node.id(), "workloads, services and policies come from xDS");
        let state = StateHandle::default();
        let client = XdsClient::new(
            config,
            state.clone(),
            Some(readiness.block("first xDS push applied")),
        );
        let xds = client.subscribe();
        tokio::spawn(client.run());
        return Ok(StateSource {
            state,
            reload: None,
            xds: Some(xds),
        });
    }
    let Some(path) = &args.config_file else {
        tracing::info!(
            "no --config and no --xds-address: the mesh is empty and every destination is passed through"
        );
        return Ok(StateSource {
            state: StateHandle::default(),
            reload: None,
            xds: None,
        });
    };
    let reloader = Reloader::start(path)?.with_metrics(metrics.clone());
    let state = reloader.state();
    let reload = Some(reloader.subscribe());
    tokio::spawn(reloader.run(args.config_poll_interval()));
    Ok(StateSource {
        state,
        reload,
        xds: None,
    })
}
