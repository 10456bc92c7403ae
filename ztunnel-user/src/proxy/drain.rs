//! Draining on SIGTERM: stop accepting, let open connections finish until a deadline, then
//! close what is left.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, watch};

/// The owner's side: starts the drain and waits for connections to end.
#[derive(Debug)]
pub struct Drain {
    signal: watch::Sender<bool>,
    tracker: Arc<Tracker>,
}

#[derive(Debug, Default)]
struct Tracker {
    open: AtomicUsize,
    idle: Notify,
}

/// The listeners' and connections' side: learns when draining started, and counts open
/// connections.
#[derive(Debug, Clone)]
pub struct DrainWatch {
    signal: watch::Receiver<bool>,
    tracker: Arc<Tracker>,
}

/// Held by each open connection; dropping it lets the drain finish.
#[derive(Debug)]
pub struct ConnectionGuard(Arc<Tracker>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    /// A drain and the watch to hand to the proxy.
    pub fn new() -> (Self, DrainWatch) {
        let (signal, receiver) = watch::channel(false);
        let tracker = Arc::new(Tracker::default());
        (
            Self {
                signal,
                tracker: tracker.clone(),
            },
            DrainWatch {
                signal: receiver,
                tracker,
            },
        )
    }

    /// Starts draining and waits until every connection ended or `timeout` passed; returns how
    /// many were still open (they are closed when their tasks are dropped).
    pub async fn drain(self, timeout: Duration) -> usize {
        let _ = self.signal.send(true);
        let all_closed = async {
            loop {
                let idle = self.tracker.idle.notified();
                if self.tracker.open.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(timeout, all_closed).await;
        let left = self.tracker.open.load(Ordering::Acquire);
        tracing::info!(left, ?timeout, "drain finished");
        left
    }

    /// Waits for SIGTERM (or Ctrl-C), then drains.
    pub async fn on_sigterm(self, timeout: Duration) -> std::io::Result<usize> {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: draining"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: draining"),
        }
        Ok(self.drain(timeout).await)
    }
}

impl DrainWatch {
    /// Completes once draining has started.
    pub async fn signaled(&self) {
        let mut signal = self.signal.clone();
        let _ = signal.wait_for(|draining| *draining).await;
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        *self.signal.borrow()
    }

    /// Counts one more open connection until the guard is dropped.
    pub fn track(&self) -> ConnectionGuard {
        self.tracker.open.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard(self.tracker.clone())
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.tracker.open.load(Ordering::Acquire)
    }
}
