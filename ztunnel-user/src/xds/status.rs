//! What the xDS client reports about itself: shown by `/config_dump` under `xds`.

use std::{collections::BTreeMap, time::SystemTime};

use serde::Serialize;

use crate::admin::config_dump::format_rfc3339;

/// The client's view of its stream, per type URL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct XdsStatus {
    /// The control plane address.
    pub address: String,
    /// Whether a stream is open now.
    pub connected: bool,
    /// Streams opened since start.
    pub connections: u64,
    /// The last connection or stream error, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Per type URL.
    pub types: BTreeMap<String, TypeStatus>,
}

/// One subscribed type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeStatus {
    /// Resources held.
    pub resources: usize,
    /// `system_version_info` of the last response applied (fully or in part).
    pub last_version: String,
    /// Nonce of the last response received.
    pub last_nonce: String,
    /// Responses ACKed since start.
    pub acks: u64,
    /// Responses NACKed since start.
    pub nacks: u64,
    /// The last NACK sent, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_nack: Option<Nack>,
}

/// A NACK as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Nack {
    /// The nonce NACKed.
    pub nonce: String,
    /// The error sent to the control plane.
    pub error: String,
    /// When (RFC 3339, UTC).
    pub time: String,
}

impl Nack {
    /// A NACK of `nonce` sent now.
    pub fn now(nonce: &str, error: &str) -> Self {
        Self {
            nonce: nonce.to_owned(),
            error: error.to_owned(),
            time: format_rfc3339(SystemTime::now()),
        }
    }
}
