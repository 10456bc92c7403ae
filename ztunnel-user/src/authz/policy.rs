//! An L4 authorization policy as Istio's ztunnel receives it: rules of clauses of matches.
//!
//! A policy matches a connection when any rule matches; a rule matches when all its clauses
//! match; a clause matches when any of its matches does (an empty clause matches); a match
//! matches when every field it sets matches, a field matching when any of its values does and
//! none of the values of its `not` form does. A policy with no rules matches nothing.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::{
    Deserialize, Deserializer, Serialize,
    de::{self, EnumAccess, IgnoredAny, MapAccess, VariantAccess, Visitor},
};

use crate::identity::SpiffeId;

/// Which workloads a policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Every workload in the mesh (a policy in the root namespace).
    Global,
    /// Every workload in the policy's namespace.
    Namespace,
    /// The workloads that list the policy in their `authorizationPolicies`.
    WorkloadSelector,
}

/// What a matching policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Allow the connection; once any ALLOW policy applies, connections it does not match are denied.
    Allow,
    /// Deny the connection; DENY wins over ALLOW.
    Deny,
}

/// One authorization policy. Field names and spellings are those of Istio ztunnel's local
/// configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// The policy name.
    pub name: String,
    /// The policy namespace.
    pub namespace: String,
    /// Which workloads it applies to.
    pub scope: Scope,
    /// What it does when it matches.
    pub action: Action,
    /// Rules → clauses → matches.
    #[serde(default)]
    pub rules: Vec<Vec<Vec<Match>>>,
    /// A dry-run policy is evaluated and logged, never enforced.
    #[serde(default)]
    pub dry_run: bool,
}

/// A string condition on a namespace or principal.
///
/// Written as Istio's ztunnel reads it, with a YAML tag (`!Exact ns1`, `!Presence []`), or as
/// a one-key map (`{Exact: ns1}`, `{Presence: []}`), which reads better in hand-written files.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum StringMatch {
    /// Equal to the value.
    Exact(String),
    /// Starts with the value.
    Prefix(String),
    /// Ends with the value.
    Suffix(String),
    /// Present and non-empty (Istio's `*`).
    Presence(),
}

const STRING_MATCH_KINDS: &[&str] = &["Exact", "Prefix", "Suffix", "Presence"];

struct StringMatchVisitor;

impl StringMatchVisitor {
    fn value<'de, A: VariantAccess<'de>>(kind: &str, value: A) -> Result<StringMatch, A::Error> {
        Ok(match kind {
            "Exact" => StringMatch::Exact(value.newtype_variant()?),
            "Prefix" => StringMatch::Prefix(value.newtype_variant()?),
            "Suffix" => StringMatch::Suffix(value.newtype_variant()?),
            "Presence" => {
                value.newtype_variant::<IgnoredAny>()?;
                StringMatch::Presence()
            }
            other => return Err(de::Error::unknown_variant(other, STRING_MATCH_KINDS)),
        })
    }
}

impl<'de> Visitor<'de> for StringMatchVisitor {
    type Value = StringMatch;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .write_str("a string match: !Exact, !Prefix, !Suffix or !Presence (or a one-key map)")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<StringMatch, A::Error> {
        let (kind, value): (String, _) = data.variant()?;
        Self::value(&kind, value)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StringMatch, A::Error> {
        let kind: String = map.next_key()?.ok_or_else(|| {
            de::Error::invalid_length(0, &"one of Exact, Prefix, Suffix, Presence")
        })?;
        let matched = match kind.as_str() {
            "Exact" => StringMatch::Exact(map.next_value()?),
            "Prefix" => StringMatch::Prefix(map.next_value()?),
            "Suffix" => StringMatch::Suffix(map.next_value()?),
            "Presence" => {
                map.next_value::<IgnoredAny>()?;
                StringMatch::Presence()
            }
            other => return Err(de::Error::unknown_variant(other, STRING_MATCH_KINDS)),
        };
        if map.next_key::<IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(
                "a string match has exactly one of Exact, Prefix, Suffix, Presence",
            ));
        }
        Ok(matched)
    }
}

impl<'de> Deserialize<'de> for StringMatch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StringMatchVisitor)
    }
}

/// A condition on the peer's namespace and service account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountMatch {
    /// The peer's namespace.
    pub namespace: String,
    /// The peer's service account.
    pub service_account: String,
}

/// A set of conditions that must all hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Match {
    /// Peer namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<StringMatch>,
    /// Peer namespaces that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<StringMatch>,
    /// Peer service accounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<ServiceAccountMatch>,
    /// Peer service accounts that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<ServiceAccountMatch>,
    /// Peer principals, matched against the SPIFFE id without its `spiffe://` prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<StringMatch>,
    /// Peer principals that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<StringMatch>,
    /// Source address ranges.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "ip_blocks"
    )]
    pub source_ips: Vec<IpNet>,
    /// Source address ranges that must not match.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "ip_blocks"
    )]
    pub not_source_ips: Vec<IpNet>,
    /// Destination address ranges.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "ip_blocks"
    )]
    pub destination_ips: Vec<IpNet>,
    /// Destination address ranges that must not match.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "ip_blocks"
    )]
    pub not_destination_ips: Vec<IpNet>,
    /// Destination ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_ports: Vec<u16>,
    /// Destination ports that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_destination_ports: Vec<u16>,
}

/// Address ranges (`198.18.0.0/15`, `2001:db8::/32`), refused with what is wrong with them.
fn ip_blocks<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| parse_ip_block(text).map_err(de::Error::custom))
        .collect()
}

/// One address range, `address/prefix-length`. ipnet's own parser says "invalid IP address
/// syntax" for any mistake, a prefix too long for the address included.
pub fn parse_ip_block(text: &str) -> Result<IpNet, String> {
    let Some((address, prefix)) = text.split_once('/') else {
        return Err(format!(
            "{text:?} is not an address range: write address/prefix-length, e.g. 198.18.0.0/15 (or /32 for one IPv4 address)"
        ));
    };
    let address: IpAddr = address
        .parse()
        .map_err(|_| format!("{text:?}: {address:?} is not an IP address"))?;
    let (family, bits) = match address {
        IpAddr::V4(_) => ("IPv4", 32),
        IpAddr::V6(_) => ("IPv6", 128),
    };
    let prefix: u8 = prefix.parse().map_err(|_| {
        format!("{text:?}: prefix length {prefix:?} is not a number from 0 to {bits}")
    })?;
    IpNet::new(address, prefix).map_err(|_| {
        format!("{text:?}: prefix length {prefix} is longer than an {family} address ({bits} bits)")
    })
}

/// What a policy is matched against.
#[derive(Debug, Clone)]
pub struct Peer<'a> {
    identity: Option<&'a SpiffeId>,
    /// The identity as Istio matches principals: without the `spiffe://` scheme.
    principal: Option<String>,
    source_ip: IpAddr,
    destination: SocketAddr,
}

impl<'a> Peer<'a> {
    /// A connection from `identity` (`None` for plaintext) at `source_ip` to `destination`.
    pub fn new(identity: Option<&'a SpiffeId>, source_ip: IpAddr, destination: SocketAddr) -> Self {
        let principal = identity.map(|identity| {
            format!(
                "{}/ns/{}/sa/{}",
                identity.trust_domain, identity.namespace, identity.service_account
            )
        });
        Self {
            identity,
            principal,
            source_ip,
            destination,
        }
    }
}

impl StringMatch {
    /// Whether `value` satisfies this condition.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(exact) => value == exact,
            Self::Prefix(prefix) => value.starts_with(prefix.as_str()),
            Self::Suffix(suffix) => value.ends_with(suffix.as_str()),
            Self::Presence() => !value.is_empty(),
        }
    }
}

impl ServiceAccountMatch {
    fn matches(&self, identity: Option<&SpiffeId>) -> bool {
        identity.is_some_and(|identity| {
            identity.namespace == self.namespace && identity.service_account == self.service_account
        })
    }
}

/// True when `positive` is empty or any of it holds, and none of `negative` holds.
fn field_matches<T>(positive: &[T], negative: &[T], holds: impl Fn(&T) -> bool) -> bool {
    (positive.is_empty() || positive.iter().any(&holds)) && !negative.iter().any(holds)
}

impl Match {
    /// Whether every condition this match sets holds for `peer`.
    pub fn matches(&self, peer: &Peer<'_>) -> bool {
        // No identity matches no principal (so only a `notPrincipals` condition can hold for
        // plaintext), while the namespace of no identity is "", as in Istio.
        let namespace = peer
            .identity
            .map_or("", |identity| identity.namespace.as_str());
        field_matches(&self.namespaces, &self.not_namespaces, |m| {
            m.matches(namespace)
        }) && field_matches(&self.service_accounts, &self.not_service_accounts, |m| {
            m.matches(peer.identity)
        }) && field_matches(&self.principals, &self.not_principals, |m| {
            peer.principal
                .as_deref()
                .is_some_and(|principal| m.matches(principal))
        }) && field_matches(&self.source_ips, &self.not_source_ips, |net| {
            net.contains(&peer.source_ip)
        }) && field_matches(&self.destination_ips, &self.not_destination_ips, |net| {
            net.contains(&peer.destination.ip())
        }) && field_matches(
            &self.destination_ports,
            &self.not_destination_ports,
            |port| *port == peer.destination.port(),
        )
    }

    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Policy {
    /// `namespace/name`, the key workloads use in `authorizationPolicies`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether any rule of this policy matches `peer`.
    pub fn matches(&self, peer: &Peer<'_>) -> bool {
        self.rules.iter().any(|rule| {
            rule.iter().all(|clause| {
                // An empty match sets no condition, and Istio does not let it match on its own.
                clause.is_empty()
                    || clause
                        .iter()
                        .any(|entry| !entry.is_empty() && entry.matches(peer))
            })
        })
    }
}
