//! Counters the proxy keeps. The admin module exports them (with Istio's names and labels);
//! tests read them directly.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

/// Which side of a TLS handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HandshakeSide {
    /// Our HBONE server refused (or was refused by) a client.
    Inbound,
    /// Our HBONE client refused (or was refused by) a server.
    Outbound,
}

/// Why a connection was refused before it was proxied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefusalReason {
    /// The source pod already had `max_connections_per_pod` open.
    PerPodLimit,
    /// An inbound HBONE stream asserted (`forwarded: for=`) a source address other than the
    /// one its connection comes from, and its peer's identity may not forward for others.
    UntrustedForwarded,
    /// An inbound HBONE stream asked for one of ztunnel's own ports in the pod (a loop).
    Loop,
}

impl RefusalReason {
    /// The label value (`reason="per_pod_limit"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PerPodLimit => "per_pod_limit",
            Self::UntrustedForwarded => "untrusted_forwarded",
            Self::Loop => "loop",
        }
    }
}

/// Why ztunnel closed an HBONE connection that its peer had not closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HboneClose {
    /// The peer did not answer a keep-alive PING in time.
    PingTimeout,
    /// The connection carried no stream for the unused timeout (server side).
    Unused,
}

impl HboneClose {
    /// The label value (`reason="ping_timeout"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PingTimeout => "ping_timeout",
            Self::Unused => "no_stream",
        }
    }
}

/// Proxy counters.
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    /// Connections accepted and being proxied, all directions.
    pub connections_opened: AtomicU64,
    /// Connections that ended.
    pub connections_closed: AtomicU64,
    /// Bytes from the accepted socket's peer towards the destination.
    pub bytes_sent: AtomicU64,
    /// Bytes from the destination back to the accepted socket's peer.
    pub bytes_received: AtomicU64,
    /// TLS connections accepted by HBONE listeners (handshake completed).
    pub hbone_connections_accepted: AtomicU64,
    /// Connections routed to another HBONE server because the first could not be reached.
    pub endpoint_retries: AtomicU64,
    /// Established connections closed because no byte moved for the idle timeout.
    pub idle_timeouts: AtomicU64,
    /// Established connections closed because a new mesh state (policy or workloads) refused
    /// them (see [`super::connections`]).
    pub policy_closures: AtomicU64,
    /// Connections refused before they were proxied, by reason.
    refusals: Mutex<BTreeMap<RefusalReason, u64>>,
    /// HBONE streams answered, by status code.
    answers: Mutex<BTreeMap<u16, u64>>,
    /// Failed TLS handshakes, by side and reason.
    handshake_failures: Mutex<BTreeMap<(HandshakeSide, &'static str), u64>>,
    /// HBONE connections ztunnel closed, by side and reason.
    hbone_closes: Mutex<BTreeMap<(HandshakeSide, HboneClose), u64>>,
}

impl ProxyMetrics {
    /// Counts a failed handshake.
    pub fn handshake_failed(&self, side: HandshakeSide, reason: &'static str) {
        *self.lock_failures().entry((side, reason)).or_default() += 1;
    }

    /// Failed handshakes so far for `side` and `reason`.
    pub fn handshake_failures(&self, side: HandshakeSide, reason: &str) -> u64 {
        self.lock_failures()
            .iter()
            .filter(|((s, r), _)| *s == side && *r == reason)
            .map(|(_, count)| *count)
            .sum()
    }

    /// Every failure counter, for export.
    pub fn all_handshake_failures(&self) -> Vec<((HandshakeSide, &'static str), u64)> {
        self.lock_failures()
            .iter()
            .map(|(key, count)| (*key, *count))
            .collect()
    }

    /// Counts a refused connection.
    pub fn refused(&self, reason: RefusalReason) {
        *self
            .refusals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// Connections refused so far for `reason`.
    pub fn refusals(&self, reason: RefusalReason) -> u64 {
        self.refusals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&reason)
            .copied()
            .unwrap_or(0)
    }

    /// Counts an HBONE connection ztunnel closed (`side`: whether it was our server's or our
    /// client's).
    pub fn hbone_closed(&self, side: HandshakeSide, reason: HboneClose) {
        *self
            .hbone_closes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry((side, reason))
            .or_default() += 1;
    }

    /// HBONE connections closed so far on `side` for `reason`.
    pub fn hbone_closes(&self, side: HandshakeSide, reason: HboneClose) -> u64 {
        self.hbone_closes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&(side, reason))
            .copied()
            .unwrap_or(0)
    }

    /// Counts an HBONE answer.
    pub fn answered(&self, status: http::StatusCode) {
        *self
            .answers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(status.as_u16())
            .or_default() += 1;
    }

    /// HBONE answers so far with `status`.
    pub fn answers(&self, status: u16) -> u64 {
        self.answers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&status)
            .copied()
            .unwrap_or(0)
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn lock_failures(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<(HandshakeSide, &'static str), u64>> {
        self.handshake_failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
