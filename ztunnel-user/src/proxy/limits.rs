//! Resource limits of the proxy: how long a handshake may take, how long a connection may sit
//! idle, and how many connections one pod may have open through ztunnel at once.
//!
//! What is bounded without a setting: each tunnel's copy buffer (`hbone::stream`, 256 KiB), h2's
//! send buffer per stream (`hbone::SEND_BUFFER`), the receive windows (`hbone::STREAM_WINDOW`,
//! `hbone::CONNECTION_WINDOW`: nothing is released before it was written to the socket), the
//! streams per HBONE connection (`hbone::SERVER_MAX_CONCURRENT_STREAMS`) and the request header
//! block (`hbone::SERVER_MAX_HEADER_LIST_SIZE`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::hbone::{HANDSHAKE_TIMEOUT, Keepalive, ServeLimits};

/// Default for [`ProxyLimits::max_connections_per_pod`]. A pod's connection costs at most one
/// copy buffer plus its share of h2's windows and send buffer; 4096 of them bound what one
/// runaway pod can take from the node's proxy to well under the memory of a node, while a
/// busy frontend with a few thousand keep-alive connections stays within it.
pub const DEFAULT_MAX_CONNECTIONS_PER_POD: usize = 4096;
/// Default for [`ProxyLimits::idle_timeout`]: generous, as long-lived idle connections
/// (database pools, watches) are normal; it only reclaims connections whose peer vanished.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// The proxy's limits; one set per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyLimits {
    /// How long an inbound HBONE client may take to finish its TLS handshake, and then to send
    /// its HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// A proxied connection that moves no byte in either direction for this long is closed on
    /// both sides.
    pub idle_timeout: Duration,
    /// Outbound connections (HBONE tunnels and passthrough) one source pod may have open at
    /// once; past it, new ones are reset and counted (`reason="per_pod_limit"`).
    pub max_connections_per_pod: usize,
    /// Keep-alive PINGs on inbound and outbound HBONE connections, and how long an inbound one
    /// may carry no stream.
    pub keepalive: Keepalive,
}

impl ProxyLimits {
    /// What an HBONE server connection is held to.
    pub fn serve_limits(&self) -> ServeLimits {
        ServeLimits {
            preface_timeout: self.handshake_timeout,
            keepalive: self.keepalive,
        }
    }
}

impl Default for ProxyLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections_per_pod: DEFAULT_MAX_CONNECTIONS_PER_POD,
            keepalive: Keepalive::default(),
        }
    }
}

/// Counts one pod's open outbound connections.
#[derive(Debug, Default)]
pub struct ConnectionSlots {
    open: AtomicUsize,
}

impl ConnectionSlots {
    /// Takes a slot if fewer than `limit` are taken; the slot is given back when dropped.
    pub fn try_acquire(self: &Arc<Self>, limit: usize) -> Option<ConnectionSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < limit).then_some(open + 1)
            })
            .ok()?;
        Some(ConnectionSlot {
            slots: self.clone(),
        })
    }

    /// Slots taken now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// One taken slot of [`ConnectionSlots`].
#[derive(Debug)]
pub struct ConnectionSlot {
    slots: Arc<ConnectionSlots>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.slots.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_stop_at_the_limit_and_come_back_when_dropped() {
        let slots = Arc::new(ConnectionSlots::default());
        let first = slots.try_acquire(2).expect("first slot");
        let second = slots.try_acquire(2).expect("second slot");
        assert!(
            slots.try_acquire(2).is_none(),
            "a third slot past a limit of 2"
        );
        assert_eq!(slots.open(), 2);
        drop(first);
        assert_eq!(slots.open(), 1);
        let _third = slots.try_acquire(2).expect("a slot freed by drop");
        drop(second);
        assert_eq!(slots.open(), 1);
    }

    #[test]
    fn a_limit_of_zero_refuses_everything() {
        let slots = Arc::new(ConnectionSlots::default());
        assert!(slots.try_acquire(0).is_none());
    }
}
