//! Open inbound connections and the facts they were admitted on, so that a new mesh state (a
//! config reload, an xDS push) reaches them: when the state changes, every open inbound
//! connection is checked again as if it arrived now, and those the new state refuses are
//! closed, logged and counted — as Istio's ztunnel does with its connection manager.
//!
//! Only inbound connections (HBONE and plaintext) are tracked: policy is enforced at the
//! destination, and closing the destination's side ends the tunnel for the client too.
//!
//! A connection is tracked *before* its first check, so a state replaced between the check and
//! the start of the copy is not missed: the re-check then closes it at once.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::watch;

use super::{Directory, InboundConnection, WorkloadInfo};
use crate::identity::SpiffeId;

/// What an inbound connection was admitted on; checked again when the state changes.
#[derive(Debug, Clone)]
pub struct Admission {
    /// The peer's proven identity; `None` for plaintext.
    pub source_identity: Option<SpiffeId>,
    /// The original source address.
    pub source: SocketAddr,
    /// The original destination.
    pub destination: SocketAddr,
    /// The pod whose listener accepted it (policy's destination when the state does not list
    /// the workload, for plaintext); for a waypoint, the destination workload.
    pub pod: WorkloadInfo,
    /// Whether the connection came through the destination's waypoint (or this is the
    /// waypoint): then the rule that a workload behind a waypoint takes HBONE only from it
    /// does not apply.
    pub via_waypoint: bool,
}

impl Admission {
    /// Why the current state of `directory` would refuse this connection, if it would.
    pub fn refusal(&self, directory: &dyn Directory) -> Option<&'static str> {
        let workload = match (
            directory.workload(self.destination.ip()),
            &self.source_identity,
        ) {
            (Some(workload), _) => workload,
            // HBONE to a workload the mesh no longer knows is answered 503.
            (None, Some(_)) => return Some("the destination workload left the mesh state"),
            (None, None) => self.pod.clone(),
        };
        if let Some(identity) = &self.source_identity
            && !self.via_waypoint
            && let Some(waypoint) = directory.waypoint_identities(self.destination.ip())
            && !waypoint.contains(identity)
        {
            return Some("the destination is now behind a waypoint the connection did not use");
        }
        let connection = InboundConnection {
            source_identity: self.source_identity.as_ref(),
            source: self.source,
            destination: self.destination,
            destination_workload: &workload,
        };
        (!directory.authorize(&connection)).then_some("denied by policy")
    }
}

struct Tracked {
    admission: Arc<Admission>,
    close: watch::Sender<Option<&'static str>>,
}

/// The open inbound connections of a node. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct ConnectionManager {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Tracked>>,
}

impl std::fmt::Debug for ConnectionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionManager")
            .field("open", &self.len())
            .finish()
    }
}

/// A tracked connection; dropping it stops tracking.
#[derive(Debug)]
pub struct TrackedConnection {
    manager: Arc<ConnectionManager>,
    id: u64,
    admission: Arc<Admission>,
    closed: watch::Receiver<Option<&'static str>>,
}

impl TrackedConnection {
    /// Resolves when a new state refused the connection, with the reason; never otherwise.
    pub async fn revoked(&self) -> &'static str {
        let mut closed = self.closed.clone();
        let reason = closed
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|reason| *reason);
        match reason {
            Some(reason) => reason,
            // Untracked without a revocation: the connection ends its own way.
            None => std::future::pending().await,
        }
    }

    /// What the connection was admitted on.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Why the connection was closed by a new state, if it was.
    pub fn revocation(&self) -> Option<&'static str> {
        *self.closed.borrow()
    }
}

impl Drop for TrackedConnection {
    fn drop(&mut self) {
        self.manager.lock().remove(&self.id);
    }
}

impl ConnectionManager {
    /// Tracks a connection from now until the returned value is dropped.
    pub fn track(self: &Arc<Self>, admission: Admission) -> TrackedConnection {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (close, closed) = watch::channel(None);
        let admission = Arc::new(admission);
        self.lock().insert(
            id,
            Tracked {
                admission: admission.clone(),
                close,
            },
        );
        TrackedConnection {
            manager: self.clone(),
            id,
            admission,
            closed,
        }
    }

    /// Open connections tracked now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no connection is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks every open connection against `directory`'s current state and closes those it
    /// refuses (each is logged); returns how many were closed.
    pub fn close_refused(&self, directory: &dyn Directory) -> usize {
        let open: Vec<(u64, Arc<Admission>)> = self
            .lock()
            .iter()
            .filter(|(_, tracked)| tracked.close.borrow().is_none())
            .map(|(id, tracked)| (*id, tracked.admission.clone()))
            .collect();
        // Policy is evaluated outside the lock: connections keep opening and closing meanwhile.
        let refused: Vec<(u64, Arc<Admission>, &'static str)> = open
            .into_iter()
            .filter_map(|(id, admission)| {
                let reason = admission.refusal(directory)?;
                Some((id, admission, reason))
            })
            .collect();
        let tracked = self.lock();
        let mut closed = 0;
        for (id, admission, reason) in refused {
            let Some(entry) = tracked.get(&id) else {
                continue;
            };
            entry.close.send_replace(Some(reason));
            closed += 1;
            tracing::info!(
                source = %admission.source,
                destination = %admission.destination,
                source_identity = ?admission.source_identity.as_ref().map(ToString::to_string),
                destination_identity = %admission.pod.identity,
                reason,
                "connection closed: the new mesh state no longer allows it"
            );
        }
        closed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Tracked>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Re-checks `manager`'s open connections against `directory` after every state change
/// `changes` reports, until the sender side is gone.
pub async fn close_refused_on_change(
    manager: Arc<ConnectionManager>,
    directory: Arc<dyn Directory>,
    mut changes: watch::Receiver<u64>,
) {
    while changes.changed().await.is_ok() {
        let generation = *changes.borrow_and_update();
        let closed = manager.close_refused(&*directory);
        tracing::debug!(
            generation,
            closed,
            open = manager.len(),
            "open connections checked against the new mesh state"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::proxy::directory::StaticDirectory;

    fn workload(service_account: &str, ip: &str) -> WorkloadInfo {
        WorkloadInfo::new(
            SpiffeId::new("cluster.local", "default", service_account),
            ip.parse::<IpAddr>().unwrap(),
        )
    }

    fn admission(source: &WorkloadInfo, destination: &WorkloadInfo) -> Admission {
        Admission {
            source_identity: Some(source.identity.clone()),
            source: SocketAddr::new(source.ips[0], 40000),
            destination: SocketAddr::new(destination.ips[0], 8080),
            pod: destination.clone(),
            via_waypoint: false,
        }
    }

    #[tokio::test]
    async fn a_new_state_closes_only_the_connections_it_refuses() {
        let sleep = workload("sleep", "198.18.0.1");
        let curl = workload("curl", "198.18.0.3");
        let echo = workload("echo", "198.18.0.2");
        let manager = Arc::new(ConnectionManager::default());
        let from_sleep = manager.track(admission(&sleep, &echo));
        let from_curl = manager.track(admission(&curl, &echo));
        let mesh = || {
            StaticDirectory::new()
                .with_workload(sleep.clone(), true)
                .with_workload(curl.clone(), true)
                .with_workload(echo.clone(), true)
        };

        let unchanged = manager.close_refused(&mesh());
        let denied = manager.close_refused(&mesh().deny(sleep.identity.clone()));
        let reason = tokio::time::timeout(std::time::Duration::from_secs(10), from_sleep.revoked())
            .await
            .expect("the denied connection is told");
        println!(
            "closed with the same state: {unchanged}; after denying sleep: {denied} ({reason}); curl's revocation: {:?}",
            from_curl.revocation()
        );
        assert_eq!(unchanged, 0);
        assert_eq!(denied, 1);
        assert_eq!(reason, "denied by policy");
        assert_eq!(from_curl.revocation(), None);
        assert_eq!(
            manager.close_refused(&mesh().deny(sleep.identity.clone())),
            0,
            "a connection is closed once"
        );
        drop(from_sleep);
        drop(from_curl);
        assert!(manager.is_empty(), "dropped connections are untracked");
    }

    #[test]
    fn hbone_to_a_workload_that_left_is_refused_and_plaintext_falls_back_to_the_pod() {
        let sleep = workload("sleep", "198.18.0.1");
        let echo = workload("echo", "198.18.0.2");
        let hbone = admission(&sleep, &echo);
        let plaintext = Admission {
            source_identity: None,
            ..hbone.clone()
        };
        let empty = StaticDirectory::new();
        assert_eq!(
            hbone.refusal(&empty),
            Some("the destination workload left the mesh state")
        );
        assert_eq!(plaintext.refusal(&empty), None);
    }
}
