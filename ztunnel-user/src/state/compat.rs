//! Fields Istio's ztunnel always writes (so a file it serialized carries them) that this proxy
//! accepts only at Istio's default value: any other value asks for behaviour we do not have,
//! and is refused with the field's path and line rather than ignored.

use serde::{Deserialize, Deserializer, Serialize, de::Error as _};

/// How these errors begin, so the configuration module can find the field's line.
pub const UNSUPPORTED_VALUE: &str = "unsupported value for ";

/// `networkMode`: only `Standard` (pods with their own network namespace).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NetworkMode {
    /// The pod has its own network namespace.
    #[default]
    Standard,
}

/// `visibility`: only `Public` (every client may use the service).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Visibility {
    /// Visible to every client.
    #[default]
    Public,
}

/// `locality`: informational only (no locality-aware load balancing here).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Locality {
    /// The region.
    #[serde(default)]
    pub region: String,
    /// The zone.
    #[serde(default)]
    pub zone: String,
    /// The subzone.
    #[serde(default)]
    pub subzone: String,
}

/// Istio's default endpoint capacity.
pub fn default_capacity() -> u32 {
    1
}

/// `capacity`: only 1 (endpoints are not weighted here).
pub fn capacity<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    match u32::deserialize(deserializer)? {
        1 => Ok(1),
        other => Err(D::Error::custom(format!(
            "{UNSUPPORTED_VALUE}`capacity`: {other} (endpoints are not weighted here; remove it or set 1)"
        ))),
    }
}

/// `nativeTunnel`: only false.
pub fn no_native_tunnel<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    match bool::deserialize(deserializer)? {
        false => Ok(false),
        true => Err(D::Error::custom(format!(
            "{UNSUPPORTED_VALUE}`nativeTunnel`: true (remove it or set false)"
        ))),
    }
}

/// `cidrVips`: only empty.
pub fn no_cidr_vips<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<()>, D::Error> {
    empty_list(deserializer, "cidrVips")
}

/// `weightedWaypoints`: only empty.
pub fn no_weighted_waypoints<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<()>, D::Error> {
    empty_list(deserializer, "weightedWaypoints")
}

fn empty_list<'de, D: Deserializer<'de>>(
    deserializer: D,
    field: &str,
) -> Result<Vec<()>, D::Error> {
    let entries = Vec::<serde::de::IgnoredAny>::deserialize(deserializer)?;
    if entries.is_empty() {
        Ok(Vec::new())
    } else {
        Err(D::Error::custom(format!(
            "{UNSUPPORTED_VALUE}`{field}`: {} entries (remove it or leave it empty)",
            entries.len()
        )))
    }
}

/// Whether a value is its type's default (to leave it out of what we write).
pub fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}
