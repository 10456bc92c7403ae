//! Exports connection events as Istio's `istio_tcp_*` metrics with Istio's labels, looking the
//! workloads up in the current state snapshot.

use std::net::SocketAddr;

use super::{
    access_log::{ConnectionRecord, Direction},
    metrics::{HandshakeSide, HboneClose, RefusalReason},
    observer::{ConnectionObserver, FailureKind, OpenConnection},
};
use crate::{
    admin::metrics::{
        ConnectionLabels, Metrics, OpenConnectionCounters, Reporter, ResponseFlags, SecurityPolicy,
    },
    hbone::Transferred,
    identity::SpiffeId,
    state::StateHandle,
};

/// A [`ConnectionObserver`] counting into the admin module's [`Metrics`].
#[derive(Debug, Clone)]
pub struct IstioMetrics {
    metrics: Metrics,
    state: StateHandle,
}

impl IstioMetrics {
    /// Counts into `metrics`, labelling from `state`.
    pub fn new(metrics: Metrics, state: StateHandle) -> Self {
        Self { metrics, state }
    }

    fn labels(&self, record: &ConnectionRecord) -> ConnectionLabels {
        let reporter = reporter(record);
        let state = self.state.snapshot();
        let workload_at = |address: SocketAddr| state.workload_by_ip(address.ip());
        let mut labels = ConnectionLabels::new(reporter);
        // The source workload is named only when it has the identity the peer proved: an
        // address is a claim, the certificate is the fact.
        let source_workload = workload_at(record.source).filter(|workload| {
            record
                .source_identity
                .as_ref()
                .is_none_or(|identity| workload.identity() == *identity)
        });
        labels = match source_workload {
            Some(source) => labels.with_source(&source, record.source_identity.as_ref()),
            // Not known here (e.g. it came through a gateway): what its baggage says.
            None => match &record.peer_baggage {
                Some(baggage) => {
                    labels.with_source_baggage(baggage, record.source_identity.as_ref())
                }
                None => labels.with_source_principal(record.source_identity.as_ref()),
            },
        };
        match (workload_at(record.destination), &record.peer_baggage) {
            (Some(destination), _) => labels = labels.with_destination(&destination),
            // Not known here (e.g. behind a gateway): what its 200's baggage says.
            (None, Some(baggage)) if reporter == Reporter::Source => {
                labels =
                    labels.with_destination_baggage(baggage, record.destination_identity.as_ref());
            }
            (None, _) => {}
        }
        if let Some(service) = state.service_by_vip(record.destination) {
            labels = labels.with_service(&service);
        }
        let security = if record.mutual_tls {
            SecurityPolicy::MutualTls
        } else {
            SecurityPolicy::Unknown
        };
        labels.with_security(security)
    }
}

impl OpenConnection for OpenConnectionCounters {
    fn closed(self: Box<Self>, transferred: Transferred) {
        // Istio: "received" is the request direction (from the client), "sent" the response.
        (*self).closed(transferred.received, transferred.sent);
    }
}

fn reporter(record: &ConnectionRecord) -> Reporter {
    match record.direction {
        Direction::Outbound => Reporter::Source,
        Direction::Waypoint => Reporter::Waypoint,
        Direction::Inbound | Direction::Passthrough => Reporter::Destination,
    }
}

fn side_reporter(side: HandshakeSide) -> Reporter {
    match side {
        HandshakeSide::Outbound => Reporter::Source,
        HandshakeSide::Inbound => Reporter::Destination,
    }
}

impl ConnectionObserver for IstioMetrics {
    fn refused(&self, reason: RefusalReason) {
        self.metrics.tunnel_refused(reason.as_str());
    }

    fn idle_timeout(&self, record: &ConnectionRecord) {
        self.metrics.idle_timeout(reporter(record));
    }

    fn closed_by_policy(&self, record: &ConnectionRecord) {
        self.metrics.closed_by_policy(reporter(record));
    }

    fn opened(&self, record: &ConnectionRecord) -> Box<dyn OpenConnection> {
        Box::new(self.metrics.connection_opened(&self.labels(record)))
    }

    fn failed(&self, record: &ConnectionRecord, kind: FailureKind) {
        let labels = self.labels(record);
        match kind {
            FailureKind::Denied => self.metrics.denied(&labels),
            FailureKind::Tls => self
                .metrics
                .connection_failed(&labels.with_response_flags(ResponseFlags::TlsFailure)),
            FailureKind::Connect => self
                .metrics
                .connection_failed(&labels.with_response_flags(ResponseFlags::ConnectionFailure)),
        }
    }

    fn endpoint_retried(&self, address: SocketAddr, reason: &'static str) {
        self.metrics.endpoint_retried(address, reason);
    }

    fn identity_failure(&self, side: HandshakeSide, reason: &'static str) {
        // The label is the reason word the failure's log line carries, as is.
        self.metrics.identity_failure(side_reporter(side), reason);
    }

    fn hbone_closed(&self, side: HandshakeSide, reason: HboneClose) {
        self.metrics
            .hbone_connection_closed(side_reporter(side), reason.as_str());
    }

    fn source_mismatch(&self, peer: &SpiffeId, claimed: &SpiffeId) {
        self.metrics.source_mismatch(peer, claimed);
    }
}

#[cfg(test)]
mod tests;
