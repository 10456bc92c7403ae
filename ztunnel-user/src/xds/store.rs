//! The resources istiod has pushed, by type and name, and the [`State`] they make.
//!
//! A response is applied resource by resource: one that cannot be decoded or converted is
//! rejected (and reported in the NACK) while the others apply, and a rejected update leaves the
//! previous version of that resource in force, as Istio's ztunnel does. If the resources that
//! did convert cannot form a state together (two workloads claiming one IP, ...), the whole
//! response is undone and the last good state stays in force.

use std::collections::BTreeMap;

use prost::Message;

use super::convert::{self, AddressResource, ConvertError};
use crate::{
    authz::Policy,
    config::LocalConfig,
    proto::{
        envoy::service::discovery::v3::DeltaDiscoveryResponse,
        istio::{security, workload as pb},
    },
    state::{Service, State, StateError, Workload},
};

/// Workloads and services: `istio.workload.Address`.
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";
/// L4 policies: `istio.security.Authorization`.
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";
/// The types this proxy subscribes to, in the order the initial requests go out.
pub const TYPE_URLS: [&str; 2] = [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL];

/// Why a resource, or a whole response, was not applied.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The response is for a type this proxy did not subscribe to.
    #[error(
        "unexpected type {0:?} (subscribed to {ADDRESS_TYPE_URL} and {AUTHORIZATION_TYPE_URL})"
    )]
    UnknownType(String),
    /// A resource entry carries no payload.
    #[error("resource {name:?}: no payload")]
    Empty {
        /// The resource name.
        name: String,
    },
    /// A payload whose `Any` type differs from the response's type.
    #[error("resource {name:?}: payload of type {found:?} in a {expected} response")]
    WrongType {
        /// The resource name.
        name: String,
        /// The payload's type URL.
        found: String,
        /// The response's type URL.
        expected: String,
    },
    /// A payload that is not valid protobuf for its type.
    #[error("resource {name:?}: cannot decode: {detail}")]
    Decode {
        /// The resource name.
        name: String,
        /// The decoder's message.
        detail: String,
    },
    /// A payload this proxy cannot honour.
    #[error("resource {name:?}: {source}")]
    Convert {
        /// The resource name.
        name: String,
        /// What is unsupported or invalid.
        source: ConvertError,
    },
    /// The resources are inconsistent together; nothing of the response was applied.
    #[error("the update makes an inconsistent state, not applied: {0}")]
    Inconsistent(StateError),
}

/// What applying one response did.
#[derive(Debug)]
pub struct Applied {
    /// The new state (to put in force).
    pub state: State,
    /// The resources that were rejected; the rest applied.
    pub rejected: Vec<ApplyError>,
}

#[derive(Debug, Clone)]
enum Stored {
    Workload(Box<Workload>),
    Service(Box<Service>),
    Policy(Policy),
}

#[derive(Debug, Clone)]
struct Entry {
    version: String,
    value: Stored,
}

/// Every resource received, per type URL then name.
#[derive(Debug, Default)]
pub struct ResourceStore {
    addresses: BTreeMap<String, Entry>,
    policies: BTreeMap<String, Entry>,
}

impl ResourceStore {
    /// Name → version of what is held for `type_url`: sent on reconnect so that istiod need not
    /// resend what did not change.
    pub fn versions(&self, type_url: &str) -> BTreeMap<String, String> {
        self.entries(type_url)
            .map(|entries| {
                entries
                    .iter()
                    .map(|(name, entry)| (name.clone(), entry.version.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many resources of `type_url` are held.
    pub fn len(&self, type_url: &str) -> usize {
        self.entries(type_url).map_or(0, BTreeMap::len)
    }

    fn entries(&self, type_url: &str) -> Option<&BTreeMap<String, Entry>> {
        match type_url {
            ADDRESS_TYPE_URL => Some(&self.addresses),
            AUTHORIZATION_TYPE_URL => Some(&self.policies),
            _ => None,
        }
    }

    fn entries_mut(&mut self, type_url: &str) -> Option<&mut BTreeMap<String, Entry>> {
        match type_url {
            ADDRESS_TYPE_URL => Some(&mut self.addresses),
            AUTHORIZATION_TYPE_URL => Some(&mut self.policies),
            _ => None,
        }
    }

    /// Applies one response: updates, then removals, then builds the state. On `Err` nothing
    /// changed.
    pub fn apply(&mut self, response: &DeltaDiscoveryResponse) -> Result<Applied, ApplyError> {
        let type_url = response.type_url.as_str();
        let mut rejected = Vec::new();
        let mut undo: Vec<(String, Option<Entry>)> = Vec::new();
        let entries = self
            .entries_mut(type_url)
            .ok_or_else(|| ApplyError::UnknownType(type_url.to_owned()))?;
        for resource in &response.resources {
            match decode(type_url, resource) {
                Ok(value) => {
                    let entry = Entry {
                        version: resource.version.clone(),
                        value,
                    };
                    undo.push((
                        resource.name.clone(),
                        entries.insert(resource.name.clone(), entry),
                    ));
                }
                Err(error) => rejected.push(error),
            }
        }
        for name in &response.removed_resources {
            if let Some(previous) = entries.remove(name) {
                undo.push((name.clone(), Some(previous)));
            }
        }
        match self.build() {
            Ok(state) => Ok(Applied { state, rejected }),
            Err(error) => {
                let entries = self
                    .entries_mut(type_url)
                    .ok_or_else(|| ApplyError::UnknownType(type_url.to_owned()))?;
                for (name, previous) in undo.into_iter().rev() {
                    match previous {
                        Some(previous) => entries.insert(name, previous),
                        None => entries.remove(&name),
                    };
                }
                Err(ApplyError::Inconsistent(error))
            }
        }
    }

    /// The state all held resources make, exactly as a configuration file listing them would.
    pub fn build(&self) -> Result<State, StateError> {
        let mut config = LocalConfig::default();
        for entry in self.addresses.values().chain(self.policies.values()) {
            match &entry.value {
                Stored::Workload(workload) => config.workloads.push(workload.as_ref().clone()),
                Stored::Service(service) => config.services.push(service.as_ref().clone()),
                Stored::Policy(policy) => config.policies.push(policy.clone()),
            }
        }
        State::from_config(config)
    }
}

fn decode(
    type_url: &str,
    resource: &crate::proto::envoy::service::discovery::v3::Resource,
) -> Result<Stored, ApplyError> {
    let name = resource.name.clone();
    let payload = resource
        .resource
        .as_ref()
        .ok_or_else(|| ApplyError::Empty { name: name.clone() })?;
    if payload.type_url != type_url {
        return Err(ApplyError::WrongType {
            name,
            found: payload.type_url.clone(),
            expected: type_url.to_owned(),
        });
    }
    let decode_error = |error: prost::DecodeError| ApplyError::Decode {
        name: name.clone(),
        detail: error.to_string(),
    };
    let convert_error = |source| ApplyError::Convert {
        name: name.clone(),
        source,
    };
    match type_url {
        ADDRESS_TYPE_URL => {
            let address = pb::Address::decode(payload.value.as_slice()).map_err(decode_error)?;
            Ok(match convert::address(address).map_err(convert_error)? {
                AddressResource::Workload(workload) => Stored::Workload(workload),
                AddressResource::Service(service) => Stored::Service(service),
            })
        }
        AUTHORIZATION_TYPE_URL => {
            let policy =
                security::Authorization::decode(payload.value.as_slice()).map_err(decode_error)?;
            convert::authorization(policy)
                .map(Stored::Policy)
                .map_err(convert_error)
        }
        other => Err(ApplyError::UnknownType(other.to_owned())),
    }
}

#[cfg(test)]
mod tests;
