//! Whether a pinned map was made by a build with this build's layout.
//!
//! aya reuses a pinned map by name without looking at it, so a map pinned by a build whose key
//! or value types differ would be handed to programs that read it with another layout. Before
//! loading, each pinned map's type, key size and value size are compared with this build's
//! types (from `ztunnel-common`). Capacity (`max_entries`) is not part of the layout: a pinned
//! map keeps the size it was created with.
//!
//! Policy, by who loads: the daemon recreates an incompatible map (unpins it, so the loader
//! creates a fresh one; programs of the old build keep the old map until their links are
//! updated) and rebuilds `pods` and `workloads` from the enrolled set before any link runs the
//! new programs. The CNI plugin and `ztunnel enroll` refuse instead: recreating maps under a
//! running daemon of the other build would split the node's state in two.

use std::{mem::size_of, path::PathBuf};

use aya::maps::{MapData, MapType};
use ztunnel_common::{
    ConfigRecord, ConnectionKey, OriginalDestination, PodCounters, PodRecord, WorkloadKey,
    WorkloadRecord,
    maps::{
        CONFIG_MAP, CONNECT_DESTINATIONS_MAP, ORIGINAL_DESTINATIONS_MAP, PODS_MAP, STATS_MAP,
        WORKLOADS_MAP,
    },
};

use super::{EbpfError, PinLayout};

/// What a map of this build looks like to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapShape {
    /// `BPF_MAP_TYPE_*`.
    pub map_type: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes (per CPU for per-CPU maps).
    pub value_size: u32,
}

impl std::fmt::Display for MapShape {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "type {}, key {} bytes, value {} bytes",
            self.map_type, self.key_size, self.value_size
        )
    }
}

const fn shape(map_type: MapType, key_size: usize, value_size: usize) -> MapShape {
    MapShape {
        map_type: map_type as u32,
        key_size: key_size as u32,
        value_size: value_size as u32,
    }
}

/// This build's shape of each map it checks (the aya-log ring buffer is aya's own).
pub fn expected_shape(name: &str) -> Option<MapShape> {
    Some(match name {
        PODS_MAP => shape(MapType::Hash, size_of::<u64>(), size_of::<PodRecord>()),
        WORKLOADS_MAP => shape(
            MapType::Hash,
            size_of::<WorkloadKey>(),
            size_of::<WorkloadRecord>(),
        ),
        CONNECT_DESTINATIONS_MAP => shape(
            MapType::LruHash,
            size_of::<u64>(),
            size_of::<OriginalDestination>(),
        ),
        ORIGINAL_DESTINATIONS_MAP => shape(
            MapType::LruHash,
            size_of::<ConnectionKey>(),
            size_of::<OriginalDestination>(),
        ),
        CONFIG_MAP => shape(MapType::Array, size_of::<u32>(), size_of::<ConfigRecord>()),
        STATS_MAP => shape(
            MapType::PerCpuArray,
            size_of::<u32>(),
            size_of::<PodCounters>(),
        ),
        _ => return None,
    })
}

/// What to do with a pinned map of another layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncompatibleMaps {
    /// Unpin it so a fresh one is created (the daemon, which then rebuilds the state).
    Recreate,
    /// Fail with [`EbpfError::IncompatibleMap`] (the CNI plugin and the CLI).
    Refuse,
}

/// The shape of the map pinned at `path`. Minimum kernel 4.13.
fn pinned_shape(path: &PathBuf) -> Result<MapShape, EbpfError> {
    let open_error = |source| EbpfError::OpenPinnedMap {
        path: path.clone(),
        source: Box::new(source),
    };
    let info = MapData::from_pin(path)
        .map_err(open_error)?
        .info()
        .map_err(open_error)?;
    Ok(MapShape {
        map_type: info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
        key_size: info.key_size(),
        value_size: info.value_size(),
    })
}

/// Compares every pinned map with this build's shape and applies `policy` to those that
/// differ; returns the names of the maps it unpinned.
pub fn check_pinned_maps(
    layout: &PinLayout,
    names: &[&'static str],
    policy: IncompatibleMaps,
) -> Result<Vec<&'static str>, EbpfError> {
    let mut recreated = Vec::new();
    for name in names {
        let Some(expected) = expected_shape(name) else {
            continue;
        };
        let path = layout.map(name);
        if !path.exists() {
            continue;
        }
        let pinned = pinned_shape(&path)?;
        if pinned == expected {
            continue;
        }
        match policy {
            IncompatibleMaps::Refuse => {
                return Err(EbpfError::IncompatibleMap {
                    path,
                    pinned,
                    expected,
                });
            }
            IncompatibleMaps::Recreate => {
                tracing::warn!(map = name, pin = %path.display(), %pinned, %expected, "pinned map has another build's layout: recreating it; its entries are rebuilt from the enrolled set");
                std::fs::remove_file(&path).map_err(|source| EbpfError::Io {
                    action: format!("unpin the incompatible map {}", path.display()),
                    source,
                })?;
                recreated.push(*name);
            }
        }
    }
    Ok(recreated)
}

#[cfg(test)]
mod tests {
    use ztunnel_common::maps::ALL_MAPS;

    use super::*;

    #[test]
    fn every_map_has_an_expected_shape() {
        for name in ALL_MAPS {
            let shape = expected_shape(name).unwrap_or_else(|| panic!("no shape for {name}"));
            assert!(
                shape.key_size > 0 && shape.value_size > 0,
                "{name}: {shape}"
            );
        }
        assert_eq!(
            expected_shape(PODS_MAP).map(|shape| shape.key_size),
            Some(8)
        );
        assert_eq!(expected_shape("AYA_LOGS"), None);
    }
}
