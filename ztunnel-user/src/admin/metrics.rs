//! Prometheus metrics under Istio's names and labels, so existing Istio dashboards work.
//!
//! `istio_tcp_*` carry Istio's full connection label set (an empty value is written `unknown`,
//! as Istio does). Events Istio has no metric for are `ztunnel_*`.

use std::{fmt::Write as _, sync::Arc};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::{
    identity::SpiffeId,
    state::{Service, Workload},
};

/// Which side of the connection reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The proxy of the client (outbound).
    #[default]
    Source,
    /// The proxy of the server (inbound).
    Destination,
    /// A waypoint between the two.
    Waypoint,
}

/// The application protocol; always TCP at L4.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum RequestProtocol {
    /// Raw TCP.
    #[default]
    Tcp,
}

/// Why a connection ended abnormally, spelled as Istio's ztunnel spells it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ResponseFlags {
    /// Nothing abnormal (`-`).
    #[default]
    None,
    /// Denied by an authorization policy (`DENY`).
    AuthorizationPolicyDenied,
    /// The upstream connection could not be made (`CONNECT`).
    ConnectionFailure,
    /// The TLS handshake failed (`TLS_FAILURE`).
    TlsFailure,
    /// The HTTP/2 handshake failed (`H2_HANDSHAKE_FAILURE`).
    Http2HandshakeFailure,
    /// A certificate or identity check failed (`IDENTITY_ERROR`).
    IdentityError,
}

/// Whether the connection was mutual TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SecurityPolicy {
    /// Plaintext, or not known (`unknown`).
    #[default]
    Unknown,
    /// Carried in an HBONE tunnel (`mutual_tls`).
    MutualTls,
}

/// A label value that is written `unknown` when empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LabelText(pub String);

impl From<&str> for LabelText {
    fn from(text: &str) -> Self {
        Self(text.to_owned())
    }
}

impl From<String> for LabelText {
    fn from(text: String) -> Self {
        Self(text)
    }
}

impl EncodeLabelValue for LabelText {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(if self.0.is_empty() {
            "unknown"
        } else {
            &self.0
        })
    }
}

macro_rules! label_values {
    ($type:ty { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl EncodeLabelValue for $type {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(match self { $(Self::$variant => $text),+ })
            }
        }
    };
}

label_values!(Reporter { Source => "source", Destination => "destination", Waypoint => "waypoint" });
label_values!(RequestProtocol { Tcp => "tcp" });
label_values!(ResponseFlags {
    None => "-",
    AuthorizationPolicyDenied => "DENY",
    ConnectionFailure => "CONNECT",
    TlsFailure => "TLS_FAILURE",
    Http2HandshakeFailure => "H2_HANDSHAKE_FAILURE",
    IdentityError => "IDENTITY_ERROR",
});
label_values!(SecurityPolicy { Unknown => "unknown", MutualTls => "mutual_tls" });

/// Istio's connection labels. Build with [`ConnectionLabels::new`] and the `with_*` methods.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, EncodeLabelSet)]
#[allow(missing_docs)] // Each field is the Istio label of the same name.
pub struct ConnectionLabels {
    pub reporter: Reporter,
    pub source_workload: LabelText,
    pub source_canonical_service: LabelText,
    pub source_canonical_revision: LabelText,
    pub source_workload_namespace: LabelText,
    pub source_principal: LabelText,
    pub source_app: LabelText,
    pub source_version: LabelText,
    pub source_cluster: LabelText,
    pub destination_service: LabelText,
    pub destination_service_namespace: LabelText,
    pub destination_service_name: LabelText,
    pub destination_workload: LabelText,
    pub destination_canonical_service: LabelText,
    pub destination_canonical_revision: LabelText,
    pub destination_workload_namespace: LabelText,
    pub destination_principal: LabelText,
    pub destination_app: LabelText,
    pub destination_version: LabelText,
    pub destination_cluster: LabelText,
    pub request_protocol: RequestProtocol,
    pub response_flags: ResponseFlags,
    pub connection_security_policy: SecurityPolicy,
}

/// The owning workload's name, falling back to the pod name, as Istio does.
fn workload_name(workload: &Workload) -> &str {
    if workload.workload_name.is_empty() {
        &workload.name
    } else {
        &workload.workload_name
    }
}

/// The `app` value: the canonical service, else the workload name.
fn app(workload: &Workload) -> &str {
    if workload.canonical_name.is_empty() {
        workload_name(workload)
    } else {
        &workload.canonical_name
    }
}

impl ConnectionLabels {
    /// Labels for a connection reported by `reporter`, everything else unknown.
    pub fn new(reporter: Reporter) -> Self {
        Self {
            reporter,
            ..Self::default()
        }
    }

    /// Fills the source labels from the client workload and its verified identity.
    pub fn with_source(mut self, workload: &Workload, identity: Option<&SpiffeId>) -> Self {
        self.source_workload = workload_name(workload).into();
        self.source_canonical_service = workload.canonical_name.as_str().into();
        self.source_canonical_revision = workload.canonical_revision.as_str().into();
        self.source_workload_namespace = workload.namespace.as_str().into();
        self.source_app = app(workload).into();
        self.source_version = workload.canonical_revision.as_str().into();
        self.source_cluster = workload.cluster_id.as_str().into();
        self.source_principal = identity.map(ToString::to_string).unwrap_or_default().into();
        self
    }

    /// Fills the source labels from the client's `baggage` header (when the source workload
    /// is not known here), and its verified identity.
    pub fn with_source_baggage(
        mut self,
        baggage: &crate::hbone::baggage::Baggage,
        identity: Option<&SpiffeId>,
    ) -> Self {
        let text = |value: Option<&String>| -> LabelText {
            value.map(String::as_str).unwrap_or_default().into()
        };
        self.source_workload = text(baggage.workload_name.as_ref());
        self.source_canonical_service = text(baggage.service_name.as_ref());
        self.source_canonical_revision = text(baggage.revision.as_ref());
        self.source_workload_namespace = text(baggage.namespace.as_ref());
        self.source_app = text(
            baggage
                .service_name
                .as_ref()
                .or(baggage.workload_name.as_ref()),
        );
        self.source_version = text(baggage.revision.as_ref());
        self.source_cluster = text(baggage.cluster_id.as_ref());
        self.source_principal = identity.map(ToString::to_string).unwrap_or_default().into();
        self
    }

    /// Fills the destination labels from the server's `baggage` header (when the destination
    /// workload is not known here), and the identity it had to prove.
    pub fn with_destination_baggage(
        mut self,
        baggage: &crate::hbone::baggage::Baggage,
        identity: Option<&SpiffeId>,
    ) -> Self {
        let text = |value: Option<&String>| -> LabelText {
            value.map(String::as_str).unwrap_or_default().into()
        };
        self.destination_workload = text(baggage.workload_name.as_ref());
        self.destination_canonical_service = text(baggage.service_name.as_ref());
        self.destination_canonical_revision = text(baggage.revision.as_ref());
        self.destination_workload_namespace = text(baggage.namespace.as_ref());
        self.destination_app = text(
            baggage
                .service_name
                .as_ref()
                .or(baggage.workload_name.as_ref()),
        );
        self.destination_version = text(baggage.revision.as_ref());
        self.destination_cluster = text(baggage.cluster_id.as_ref());
        self.destination_principal = identity.map(ToString::to_string).unwrap_or_default().into();
        self
    }

    /// Sets only the source principal (when the source workload is not known).
    pub fn with_source_principal(mut self, identity: Option<&SpiffeId>) -> Self {
        self.source_principal = identity.map(ToString::to_string).unwrap_or_default().into();
        self
    }

    /// Fills the destination labels from the server workload; the principal is its identity.
    pub fn with_destination(mut self, workload: &Workload) -> Self {
        self.destination_workload = workload_name(workload).into();
        self.destination_canonical_service = workload.canonical_name.as_str().into();
        self.destination_canonical_revision = workload.canonical_revision.as_str().into();
        self.destination_workload_namespace = workload.namespace.as_str().into();
        self.destination_app = app(workload).into();
        self.destination_version = workload.canonical_revision.as_str().into();
        self.destination_cluster = workload.cluster_id.as_str().into();
        self.destination_principal = workload.identity().to_string().into();
        self
    }

    /// Fills the destination service labels.
    pub fn with_service(mut self, service: &Service) -> Self {
        self.destination_service = service.hostname.as_str().into();
        self.destination_service_name = service.name.as_str().into();
        self.destination_service_namespace = service.namespace.as_str().into();
        self
    }

    /// Sets `connection_security_policy`.
    pub fn with_security(mut self, policy: SecurityPolicy) -> Self {
        self.connection_security_policy = policy;
        self
    }

    /// Sets `response_flags`.
    pub fn with_response_flags(mut self, flags: ResponseFlags) -> Self {
        self.response_flags = flags;
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IdentityFailureLabels {
    reporter: Reporter,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndpointRetryLabels {
    endpoint: LabelText,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SourceMismatchLabels {
    reporter: Reporter,
    source_principal: LabelText,
    claimed_principal: LabelText,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HboneCloseLabels {
    reporter: Reporter,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReporterLabels {
    reporter: Reporter,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    result: LabelText,
}

/// Each metric family's name (after its `istio_` or `ztunnel_` prefix) and help text.
const TCP_CONNECTIONS_OPENED: (&str, &str) = (
    "tcp_connections_opened",
    "The total number of TCP connections opened",
);
const TCP_CONNECTIONS_CLOSED: (&str, &str) = (
    "tcp_connections_closed",
    "The total number of TCP connections closed",
);
const TCP_CONNECTIONS_FAILED: (&str, &str) = (
    "tcp_connections_failed",
    "The total number of TCP connections that failed to establish",
);
const TCP_RECEIVED_BYTES: (&str, &str) = (
    "tcp_received_bytes",
    "The size of total bytes received during request in case of a TCP connection",
);
const TCP_SENT_BYTES: (&str, &str) = (
    "tcp_sent_bytes",
    "The size of total bytes sent during response in case of a TCP connection",
);
const CONNECTIONS_DENIED: (&str, &str) = (
    "connections_denied",
    "Connections refused by authorization policy",
);
const IDENTITY_FAILURES: (&str, &str) = (
    "identity_failures",
    "Handshakes refused because of the peer's certificate or TLS version",
);
const ENDPOINT_RETRIES: (&str, &str) = (
    "endpoint_retries",
    "Connections routed to another endpoint (waypoint replica or service endpoint) \
                 because the one picked could not be reached; that one is then skipped for a while",
);
const SOURCE_ADDRESS_MISMATCHES: (&str, &str) = (
    "source_address_mismatches",
    "HBONE streams refused because the source address they carried belongs to a workload of another identity",
);
const CONFIG_RELOADS: (&str, &str) = ("config_reloads", "Configuration reload attempts by result");
const TUNNELS_REFUSED: (&str, &str) = (
    "tunnels_refused",
    "Connections and HBONE streams refused before they were proxied: a limit was reached \
     (per_pod_limit), a client asserted a source address it may not (untrusted_forwarded), \
     a stream asked for one of ztunnel's own ports (loop)",
);
const POLICY_CLOSURES: (&str, &str) = (
    "connections_closed_by_policy",
    "Established connections closed because a new mesh state (authorization policy or \
     workloads) no longer allows them",
);
const HBONE_CLOSES: (&str, &str) = (
    "hbone_connections_closed",
    "HBONE connections ztunnel closed although the peer had not: a keep-alive PING went \
     unanswered (ping_timeout), or the connection carried no stream for too long (no_stream)",
);
const IDLE_TIMEOUTS: (&str, &str) = (
    "idle_timeouts",
    "Established connections closed because no byte moved for the idle timeout",
);

/// Every family with its full name, for [`exposition::describe_empty_families`].
const FAMILIES: &[(&str, (&str, &str))] = &[
    ("istio", TCP_CONNECTIONS_OPENED),
    ("istio", TCP_CONNECTIONS_CLOSED),
    ("istio", TCP_CONNECTIONS_FAILED),
    ("istio", TCP_RECEIVED_BYTES),
    ("istio", TCP_SENT_BYTES),
    ("ztunnel", CONNECTIONS_DENIED),
    ("ztunnel", IDENTITY_FAILURES),
    ("ztunnel", ENDPOINT_RETRIES),
    ("ztunnel", SOURCE_ADDRESS_MISMATCHES),
    ("ztunnel", CONFIG_RELOADS),
    ("ztunnel", TUNNELS_REFUSED),
    ("ztunnel", IDLE_TIMEOUTS),
    ("ztunnel", HBONE_CLOSES),
    ("ztunnel", POLICY_CLOSURES),
];

#[derive(Debug)]
struct Inner {
    registry: Registry,
    opened: Family<ConnectionLabels, Counter>,
    closed: Family<ConnectionLabels, Counter>,
    failed: Family<ConnectionLabels, Counter>,
    sent_bytes: Family<ConnectionLabels, Counter>,
    received_bytes: Family<ConnectionLabels, Counter>,
    denied: Family<ConnectionLabels, Counter>,
    identity_failures: Family<IdentityFailureLabels, Counter>,
    endpoint_retries: Family<EndpointRetryLabels, Counter>,
    source_mismatches: Family<SourceMismatchLabels, Counter>,
    config_reloads: Family<ReloadLabels, Counter>,
    tunnels_refused: Family<RefusalLabels, Counter>,
    idle_timeouts: Family<ReporterLabels, Counter>,
    hbone_closes: Family<HboneCloseLabels, Counter>,
    policy_closures: Family<ReporterLabels, Counter>,
}

/// The counters one open connection adds to when it ends, from [`Metrics::connection_opened`].
#[derive(Debug)]
pub struct OpenConnectionCounters {
    closed: Counter,
    sent_bytes: Counter,
    received_bytes: Counter,
}

impl OpenConnectionCounters {
    /// The connection ended; `sent` bytes went to the client, `received` came from it
    /// (Istio's convention: received is the request direction).
    pub fn closed(self, sent: u64, received: u64) {
        self.closed.inc();
        self.sent_bytes.inc_by(sent);
        self.received_bytes.inc_by(received);
    }
}

/// The process's metrics; cheap to clone, every clone counts into the same registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let opened = Family::default();
        let closed = Family::default();
        let failed = Family::default();
        let sent_bytes = Family::default();
        let received_bytes = Family::default();
        let denied = Family::default();
        let identity_failures = Family::default();
        let endpoint_retries = Family::default();
        let source_mismatches = Family::default();
        let config_reloads = Family::default();
        let tunnels_refused = Family::default();
        let idle_timeouts = Family::default();
        let hbone_closes = Family::default();
        let policy_closures = Family::default();
        {
            let istio = registry.sub_registry_with_prefix("istio");
            istio.register(
                TCP_CONNECTIONS_OPENED.0,
                TCP_CONNECTIONS_OPENED.1,
                opened.clone(),
            );
            istio.register(
                TCP_CONNECTIONS_CLOSED.0,
                TCP_CONNECTIONS_CLOSED.1,
                closed.clone(),
            );
            istio.register(
                TCP_CONNECTIONS_FAILED.0,
                TCP_CONNECTIONS_FAILED.1,
                failed.clone(),
            );
            istio.register(
                TCP_RECEIVED_BYTES.0,
                TCP_RECEIVED_BYTES.1,
                received_bytes.clone(),
            );
            istio.register(TCP_SENT_BYTES.0, TCP_SENT_BYTES.1, sent_bytes.clone());
        }
        {
            let own = registry.sub_registry_with_prefix("ztunnel");
            own.register(CONNECTIONS_DENIED.0, CONNECTIONS_DENIED.1, denied.clone());
            own.register(
                IDENTITY_FAILURES.0,
                IDENTITY_FAILURES.1,
                identity_failures.clone(),
            );
            own.register(
                ENDPOINT_RETRIES.0,
                ENDPOINT_RETRIES.1,
                endpoint_retries.clone(),
            );
            own.register(
                SOURCE_ADDRESS_MISMATCHES.0,
                SOURCE_ADDRESS_MISMATCHES.1,
                source_mismatches.clone(),
            );
            own.register(CONFIG_RELOADS.0, CONFIG_RELOADS.1, config_reloads.clone());
            own.register(
                TUNNELS_REFUSED.0,
                TUNNELS_REFUSED.1,
                tunnels_refused.clone(),
            );
            own.register(IDLE_TIMEOUTS.0, IDLE_TIMEOUTS.1, idle_timeouts.clone());
            own.register(HBONE_CLOSES.0, HBONE_CLOSES.1, hbone_closes.clone());
            own.register(
                POLICY_CLOSURES.0,
                POLICY_CLOSURES.1,
                policy_closures.clone(),
            );
        }
        let metrics = Self {
            inner: Arc::new(Inner {
                registry,
                opened,
                closed,
                failed,
                sent_bytes,
                received_bytes,
                denied,
                identity_failures,
                endpoint_retries,
                source_mismatches,
                config_reloads,
                tunnels_refused,
                idle_timeouts,
                hbone_closes,
                policy_closures,
            }),
        };
        metrics.create_known_series();
        metrics
    }

    /// A connection was accepted for proxying. The counters its end adds to are looked up now,
    /// under the same labels: a workload that changes or leaves while the connection is open
    /// does not split one connection across two label sets (Istio's ztunnel also labels a
    /// connection once), and closing it costs no label lookup.
    pub fn connection_opened(&self, labels: &ConnectionLabels) -> OpenConnectionCounters {
        self.inner.opened.get_or_create(labels).inc();
        OpenConnectionCounters {
            closed: self.inner.closed.get_or_create(labels).clone(),
            sent_bytes: self.inner.sent_bytes.get_or_create(labels).clone(),
            received_bytes: self.inner.received_bytes.get_or_create(labels).clone(),
        }
    }

    /// A connection could not be established (upstream refused, no route...).
    pub fn connection_failed(&self, labels: &ConnectionLabels) {
        self.inner.failed.get_or_create(labels).inc();
    }

    /// A connection was refused by policy. Also counted as failed with `response_flags=DENY`.
    pub fn denied(&self, labels: &ConnectionLabels) {
        let labels = labels
            .clone()
            .with_response_flags(ResponseFlags::AuthorizationPolicyDenied);
        self.inner.denied.get_or_create(&labels).inc();
        self.inner.failed.get_or_create(&labels).inc();
    }

    /// A handshake was refused because of the peer's identity or TLS version; `reason` is the
    /// word the log line of the failure carries (`wrong_trust_domain`, `tls_io_error`, ...).
    pub fn identity_failure(&self, reporter: Reporter, reason: &'static str) {
        self.inner
            .identity_failures
            .get_or_create(&IdentityFailureLabels { reporter, reason })
            .inc();
    }

    /// The HBONE server at `endpoint` could not be reached (`reason`); the connection was
    /// routed to another endpoint.
    pub fn endpoint_retried(&self, endpoint: std::net::SocketAddr, reason: &'static str) {
        self.inner
            .endpoint_retries
            .get_or_create(&EndpointRetryLabels {
                endpoint: endpoint.to_string().into(),
                reason,
            })
            .inc();
    }

    /// A stream from `source_principal` carried a source address that belongs to a workload of
    /// `claimed_principal`, and was refused.
    pub fn source_mismatch(&self, source_principal: &SpiffeId, claimed_principal: &SpiffeId) {
        self.inner
            .source_mismatches
            .get_or_create(&SourceMismatchLabels {
                reporter: Reporter::Destination,
                source_principal: source_principal.to_string().into(),
                claimed_principal: claimed_principal.to_string().into(),
            })
            .inc();
    }

    /// A configuration reload was applied (`true`) or rejected (`false`).
    pub fn config_reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.inner
            .config_reloads
            .get_or_create(&ReloadLabels {
                result: result.into(),
            })
            .inc();
    }

    /// A connection was refused before it was proxied (`reason`: `per_pod_limit`,
    /// `untrusted_forwarded`, `loop`).
    pub fn tunnel_refused(&self, reason: &'static str) {
        self.inner
            .tunnels_refused
            .get_or_create(&RefusalLabels { reason })
            .inc();
    }

    /// ztunnel closed an HBONE connection its peer had not closed (`reason`: `ping_timeout`,
    /// `no_stream`).
    pub fn hbone_connection_closed(&self, reporter: Reporter, reason: &'static str) {
        self.inner
            .hbone_closes
            .get_or_create(&HboneCloseLabels { reporter, reason })
            .inc();
    }

    /// An established connection was closed because it was idle.
    pub fn idle_timeout(&self, reporter: Reporter) {
        self.inner
            .idle_timeouts
            .get_or_create(&ReporterLabels { reporter })
            .inc();
    }

    /// An established connection was closed because a new mesh state refused it.
    pub fn closed_by_policy(&self, reporter: Reporter) {
        self.inner
            .policy_closures
            .get_or_create(&ReporterLabels { reporter })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)?;
        exposition::describe_empty_families(&mut text, FAMILIES);
        Ok(text)
    }

    /// Creates at zero every series whose labels are known before anything happens, so a
    /// scrape shows 0 rather than nothing (see [`exposition`]).
    fn create_known_series(&self) {
        // The verdicts of `identity::verify::failure_reason` an operator alerts on.
        const IDENTITY_FAILURE_REASONS: [&str; 6] = [
            "wrong_trust_domain",
            "unexpected_identity",
            "expired",
            "unknown_issuer",
            "no_client_certificate",
            "tls_version_not_1_3",
        ];
        for reporter in [Reporter::Source, Reporter::Destination] {
            for reason in IDENTITY_FAILURE_REASONS {
                let _ = self
                    .inner
                    .identity_failures
                    .get_or_create(&IdentityFailureLabels { reporter, reason });
            }
            let _ = self
                .inner
                .idle_timeouts
                .get_or_create(&ReporterLabels { reporter });
        }
        for result in ["applied", "rejected"] {
            let _ = self.inner.config_reloads.get_or_create(&ReloadLabels {
                result: result.into(),
            });
        }
        let _ = self.inner.tunnels_refused.get_or_create(&RefusalLabels {
            reason: crate::proxy::metrics::RefusalReason::PerPodLimit.as_str(),
        });
    }
}

mod exposition;
#[cfg(test)]
mod tests;
