//! Upgrades without a gap (`ztunnel daemon --takeover`): a new daemon started beside the one
//! that holds the run dir *stands by*. It opens its own in-pod listeners for every enrolled pod
//! (they join the old daemon's in one `SO_REUSEPORT` group, see
//! [`super::socket_factory::listen_in`]) and says it is ready, so both daemons accept. It only
//! reads shared state meanwhile: it does not write the enrolled set or the config map, attach or
//! adopt programs, or bind the enrollment socket.
//!
//! When the old daemon is told to stop (SIGTERM: the DaemonSet's rolling update), it closes its
//! listeners (the kernel migrates their queued connections to ours: `tcp_migrate_req`), removes
//! the enrollment socket and then releases the run dir's daemon lock, and drains its open
//! connections. The standing-by daemon sees the lock free, takes it, and continues exactly like a
//! restart: adopts the pinned programs and links, binds the enrollment socket, and keeps the
//! listeners it already has. At no instant is an enrolled pod without a listener, and at no
//! instant do two daemons write state or attach programs.

use std::{collections::HashMap, io, sync::Arc, time::Duration};

use tokio::signal::unix::{SignalKind, signal};

use super::{
    InpodError,
    daemon::{DaemonConfig, RECONCILE_INTERVAL, reconcile},
    handler::PodTrafficHandler,
    listeners::PodListeners,
    state::DaemonLock,
};
use crate::ebpf::PinnedMaps;

/// How often a standing-by daemon tries the run dir's daemon lock.
const LOCK_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Serves every enrolled pod beside the daemon holding the run dir until that one exits; then
/// returns the lock. `None` if this daemon was itself told to stop first (its listeners close).
/// Calls `on_ready` once the pods enrolled at start are served.
pub(super) async fn stand_by(
    config: &DaemonConfig,
    handler: &Arc<dyn PodTrafficHandler>,
    serving: &mut HashMap<u64, PodListeners>,
    on_ready: impl FnOnce(),
) -> Result<Option<DaemonLock>, InpodError> {
    tracing::info!(run_dir = %config.run_dir.display(), "another ztunnel daemon holds the run dir; standing by beside it until it exits (--takeover)");
    let maps = Arc::new(PinnedMaps::open(&config.layout)?);
    reconcile(config, handler, &maps, serving);
    tracing::info!(
        pods = serving.len(),
        "ztunnel daemon standing by: serving enrolled pods beside the running daemon"
    );
    on_ready();

    let signal_error = |source| InpodError::Io {
        action: "install signal handlers".into(),
        source,
    };
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let mut lock_poll = tokio::time::interval(LOCK_POLL_INTERVAL);
    let mut ticker = tokio::time::interval(RECONCILE_INTERVAL);
    loop {
        tokio::select! {
            _ = terminate.recv() => return Ok(None),
            _ = interrupt.recv() => return Ok(None),
            _ = ticker.tick() => reconcile(config, handler, &maps, serving),
            _ = lock_poll.tick() => match DaemonLock::acquire(&config.run_dir) {
                Ok(lock) => {
                    tracing::info!(pods = serving.len(), "the previous daemon released the run dir; taking over");
                    return Ok(Some(lock));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(source) => return Err(InpodError::state(&config.run_dir, source)),
            },
        }
    }
}
