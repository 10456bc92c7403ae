//! L4 authorization with Istio's semantics.
//!
//! The policies that apply to a destination workload are the global ones, those of its namespace
//! and the workload-scoped ones it names. Then: any matching DENY policy denies; no ALLOW policy
//! allows; a matching ALLOW policy allows; otherwise deny. Dry-run policies are logged only.

pub mod policy;

use std::{fmt, net::SocketAddr, sync::Arc};

pub use policy::{Action, Match, Peer, Policy, Scope, ServiceAccountMatch, StringMatch};

use crate::{
    identity::SpiffeId,
    state::{StateHandle, Workload},
};

/// What authorization knows about a connection.
#[derive(Debug, Clone)]
pub struct ConnectionAttributes {
    /// The verified peer identity; `None` for plaintext (inbound passthrough).
    pub source_identity: Option<SpiffeId>,
    /// The peer's address.
    pub source: SocketAddr,
    /// The workload the connection is for.
    pub destination_workload: Arc<Workload>,
    /// The original destination address and port.
    pub destination: SocketAddr,
}

impl<'a> From<&'a ConnectionAttributes> for Peer<'a> {
    fn from(connection: &'a ConnectionAttributes) -> Self {
        Peer::new(
            connection.source_identity.as_ref(),
            connection.source.ip(),
            connection.destination,
        )
    }
}

/// Why a connection was denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// A DENY policy matched.
    DeniedBy {
        /// `namespace/name` of the policy.
        policy: String,
    },
    /// ALLOW policies apply and none matched.
    NotAllowed,
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DeniedBy { policy } => write!(f, "denied by policy {policy}"),
            Self::NotAllowed => f.write_str("allow policies exist and none matched"),
        }
    }
}

/// The verdict for a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let it through.
    Allow,
    /// Refuse it (HBONE answers 401).
    Deny(DenyReason),
}

impl Decision {
    /// Whether the verdict is [`Decision::Allow`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow)
    }
}

/// Applies Istio's decision procedure to the policies that apply to one workload.
pub fn evaluate<'a>(
    policies: impl IntoIterator<Item = &'a Policy>,
    connection: &ConnectionAttributes,
) -> Decision {
    let peer = Peer::from(connection);
    let (enforced, dry_run): (Vec<&Policy>, Vec<&Policy>) =
        policies.into_iter().partition(|policy| !policy.dry_run);
    for policy in dry_run.iter().filter(|policy| policy.matches(&peer)) {
        tracing::info!(policy = %policy.key(), action = ?policy.action, source = %connection.source,
            destination = %connection.destination, "dry-run policy matched");
    }
    if let Some(policy) = enforced
        .iter()
        .find(|policy| policy.action == Action::Deny && policy.matches(&peer))
    {
        return Decision::Deny(DenyReason::DeniedBy {
            policy: policy.key(),
        });
    }
    let mut allow = enforced
        .iter()
        .filter(|policy| policy.action == Action::Allow)
        .peekable();
    if allow.peek().is_none() {
        return Decision::Allow;
    }
    if allow.any(|policy| policy.matches(&peer)) {
        Decision::Allow
    } else {
        Decision::Deny(DenyReason::NotAllowed)
    }
}

/// Decides connections against the policies of the current configuration.
#[derive(Debug, Clone)]
pub struct Authorizer {
    state: StateHandle,
}

impl Authorizer {
    /// An authorizer that always reads the latest configuration from `state`.
    pub fn new(state: StateHandle) -> Self {
        Self { state }
    }

    /// The verdict for `connection`, logged at debug level (denials at info).
    pub fn evaluate(&self, connection: &ConnectionAttributes) -> Decision {
        let snapshot = self.state.snapshot();
        let decision = evaluate(
            snapshot.policies_for(&connection.destination_workload),
            connection,
        );
        match &decision {
            Decision::Allow => tracing::debug!(
                source = %connection.source,
                source_identity = ?connection.source_identity.as_ref().map(ToString::to_string),
                destination = %connection.destination,
                workload = %connection.destination_workload.key(),
                "connection allowed"
            ),
            Decision::Deny(reason) => tracing::info!(
                source = %connection.source,
                source_identity = ?connection.source_identity.as_ref().map(ToString::to_string),
                destination = %connection.destination,
                workload = %connection.destination_workload.key(),
                %reason,
                "connection denied"
            ),
        }
        decision
    }
}

#[cfg(test)]
mod tests;
