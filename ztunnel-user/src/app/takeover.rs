//! Upgrades without a gap (`ztunnel daemon --takeover`): a new daemon started beside the one
//! that holds the run dir *stands by*. Its proxy connects to the old daemon's agent over the ZDS
//! socket, like any proxy, and opens its own in-pod listeners for every pod the agent sends
//! (they join the old daemon's in one `SO_REUSEPORT` group), then says it is ready, so both
//! daemons accept. It writes no state, attaches nothing and binds no socket meanwhile.
//!
//! When the old daemon is told to stop (SIGTERM: the DaemonSet's rolling update), it closes its
//! listeners (the kernel migrates their queued connections to ours: `tcp_migrate_req`), closes
//! its sockets and then releases the run dir's daemon lock, and drains its open connections. The
//! standing-by daemon sees the lock free, takes it, and continues exactly like a restart: its own
//! agent adopts the pinned programs and links and binds the sockets, and its proxy — which kept
//! every listener it had — reconnects to it; the snapshot reconciles. At no instant is an
//! enrolled pod without a listener, and at no instant do two agents write state or attach.

use std::{io, path::Path, time::Duration};

use tokio::sync::watch;

use super::{AppError, proxy::ReadyAfterSnapshot};
use crate::{
    inpod::{InpodError, pods::PodServers, state::DaemonLock},
    zds::{client, transport::SeqPacket},
};

/// How often a standing-by daemon tries the run dir's daemon lock.
const LOCK_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Serves every pod of the agent at `zds_socket` until the run dir's lock is free; then returns
/// it. `None` if this daemon was itself told to stop first. Calls `ready` once the agent's
/// snapshot is served.
pub async fn stand_by(
    zds_socket: &Path,
    run_dir: &Path,
    pods: &mut PodServers,
    ready: &mut Option<Box<dyn FnOnce() + Send>>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<DaemonLock>, AppError> {
    tracing::info!(run_dir = %run_dir.display(), zds_socket = %zds_socket.display(), "another ztunnel daemon holds the run dir; standing by beside it until it exits (--takeover)");
    let connection = SeqPacket::connect(zds_socket).await?;
    let release = ready.take();
    let mut sink = ReadyAfterSnapshot {
        pods,
        ready: Some(Box::new(move || {
            if let Some(release) = release {
                release();
            }
            tracing::info!(
                "ztunnel daemon standing by: serving enrolled pods beside the running daemon"
            );
        })),
    };
    let mut stop_serving = stop.clone();
    let serving = client::serve_connection(&connection, &mut sink, &mut stop_serving);
    tokio::pin!(serving);
    let mut serving_done = false;
    let mut lock_poll = tokio::time::interval(LOCK_POLL_INTERVAL);
    loop {
        tokio::select! {
            ended = &mut serving, if !serving_done => {
                serving_done = true;
                match ended {
                    Ok(client::Ended::Stopped) => return Ok(None),
                    Ok(client::Ended::AgentClosed) => tracing::info!("the previous daemon's agent closed its ZDS socket; waiting for the run dir"),
                    Err(error) => tracing::warn!(%error, "the connection to the previous daemon's agent broke; waiting for the run dir"),
                }
            }
            _ = stop.wait_for(|stop| *stop), if serving_done => return Ok(None),
            _ = lock_poll.tick() => match DaemonLock::acquire(run_dir) {
                Ok(lock) => {
                    tracing::info!("the previous daemon released the run dir; taking over");
                    return Ok(Some(lock));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(source) => return Err(InpodError::state(run_dir, source).into()),
            },
        }
    }
}
