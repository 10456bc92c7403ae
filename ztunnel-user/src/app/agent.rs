//! `ztunnel agent`: capture only. Proxies — ours (`ztunnel proxy`) or Istio's ztunnel in shared
//! mode with `INPOD_UDS` at our socket — connect over ZDS.

use tokio::sync::watch;

use super::{
    AgentArgs, AppError, capture_cgroup, capture_config, check_bpffs, mesh_state,
    proxy::stop_on_signal,
};
use crate::agent::{Agent, AgentConfig, lock_run_dir};

/// Runs the agent until SIGTERM/SIGINT.
pub fn run(args: AgentArgs) -> Result<(), AppError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("ztunnel-agent")
        .enable_all()
        .build()
        .map_err(AppError::Runtime)?;
    runtime.block_on(async move {
        let cgroup = capture_cgroup(&args.capture)?;
        check_bpffs(&args.capture)?;
        let stop: watch::Receiver<bool> = stop_on_signal()?;
        let lock = lock_run_dir(&args.capture.run_dir)?;
        let agent = Agent::start(
            AgentConfig {
                capture: capture_config(&args.capture, cgroup),
                zds_socket: args.capture.zds_socket(),
                mesh: mesh_state(&args)?,
            },
            lock,
        )?;
        agent.run(stop).await?;
        Ok(())
    })
}
