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

/// Why a peer's identity was refused. [`Metrics::identity_failure`] also takes any other
/// `&'static str` reason word (e.g. the identity module's own), used as the label as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentityFailureReason {
    /// The peer's trust domain is not ours (`wrong_trust_domain`).
    WrongTrustDomain,
    /// The server's SAN is not the identity expected for the destination (`unexpected_server_san`).
    UnexpectedServerSan,
    /// The certificate is expired or not yet valid (`expired_certificate`).
    ExpiredCertificate,
    /// The certificate does not chain to our trust bundle (`unknown_issuer`).
    UnknownIssuer,
    /// The client presented no certificate (`no_client_certificate`).
    NoClientCertificate,
    /// The peer offered a TLS version other than 1.3 (`tls_version`).
    TlsVersion,
    /// The certificate has no usable SPIFFE URI SAN (`bad_san`).
    BadSan,
    /// Anything else in the handshake (`other`).
    Other,
}

impl From<IdentityFailureReason> for &'static str {
    fn from(reason: IdentityFailureReason) -> Self {
        match reason {
            IdentityFailureReason::WrongTrustDomain => "wrong_trust_domain",
            IdentityFailureReason::UnexpectedServerSan => "unexpected_server_san",
            IdentityFailureReason::ExpiredCertificate => "expired_certificate",
            IdentityFailureReason::UnknownIssuer => "unknown_issuer",
            IdentityFailureReason::NoClientCertificate => "no_client_certificate",
            IdentityFailureReason::TlsVersion => "tls_version",
            IdentityFailureReason::BadSan => "bad_san",
            IdentityFailureReason::Other => "other",
        }
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
struct ReporterLabels {
    reporter: Reporter,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    result: LabelText,
}

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
        let policy_closures = Family::default();
        {
            let istio = registry.sub_registry_with_prefix("istio");
            istio.register(
                "tcp_connections_opened",
                "The total number of TCP connections opened",
                opened.clone(),
            );
            istio.register(
                "tcp_connections_closed",
                "The total number of TCP connections closed",
                closed.clone(),
            );
            istio.register(
                "tcp_connections_failed",
                "The total number of TCP connections that failed to establish",
                failed.clone(),
            );
            istio.register(
                "tcp_received_bytes",
                "The size of total bytes received during request in case of a TCP connection",
                received_bytes.clone(),
            );
            istio.register(
                "tcp_sent_bytes",
                "The size of total bytes sent during response in case of a TCP connection",
                sent_bytes.clone(),
            );
        }
        {
            let own = registry.sub_registry_with_prefix("ztunnel");
            own.register(
                "connections_denied",
                "Connections refused by authorization policy",
                denied.clone(),
            );
            own.register(
                "identity_failures",
                "Handshakes refused because of the peer's certificate or TLS version",
                identity_failures.clone(),
            );
            own.register(
                "endpoint_retries",
                "Connections routed to another endpoint (waypoint replica or service endpoint) \
                 because the one picked could not be reached; that one is then skipped for a while",
                endpoint_retries.clone(),
            );
            own.register(
                "source_address_mismatches",
                "HBONE streams refused because the source address they carried belongs to a workload of another identity",
                source_mismatches.clone(),
            );
            own.register(
                "config_reloads",
                "Configuration reload attempts by result",
                config_reloads.clone(),
            );
            own.register(
                "tunnels_refused",
                "Connections reset before they were proxied because a limit was reached",
                tunnels_refused.clone(),
            );
            own.register(
                "idle_timeouts",
                "Established connections closed because no byte moved for the idle timeout",
                idle_timeouts.clone(),
            );
            own.register(
                "connections_closed_by_policy",
                "Established connections closed because a new mesh state (authorization policy \
                 or workloads) no longer allows them",
                policy_closures.clone(),
            );
        }
        Self {
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
                policy_closures,
            }),
        }
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

    /// A handshake was refused because of the peer's identity or TLS version.
    pub fn identity_failure(&self, reporter: Reporter, reason: impl Into<&'static str>) {
        let reason = reason.into();
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

    /// A connection was refused before it was proxied (`reason`: `per_pod_limit`).
    pub fn tunnel_refused(&self, reason: &'static str) {
        self.inner
            .tunnels_refused
            .get_or_create(&RefusalLabels { reason })
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
        Ok(text)
    }
}

#[cfg(test)]
mod tests;
