//! Typed access to the pinned maps, opened by path: works whether or not the daemon runs
//! (used by enrollment, the daemon and `ztunnel inspect`).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues};
use ztunnel_common::{
    ConfigRecord, ConnectionKey, FAMILY_IPV4, FAMILY_IPV6, OriginalDestination, PodCounters,
    PodRecord, WorkloadKey, WorkloadRecord,
    constants::{BYPASS_MARK, HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT, UPSTREAM_MARK},
    maps::{CONFIG_MAP, ORIGINAL_DESTINATIONS_MAP, PODS_MAP, STATS_MAP, WORKLOADS_MAP},
};

use super::{EbpfError, PinLayout};

/// The pinned maps of one bpffs root.
pub struct PinnedMaps {
    /// `pods`.
    pub pods: HashMap<MapData, u64, PodRecord>,
    /// `workloads`.
    pub workloads: HashMap<MapData, WorkloadKey, WorkloadRecord>,
    /// `orig_dst`.
    pub original_destinations: HashMap<MapData, ConnectionKey, OriginalDestination>,
    /// `config`.
    pub config: Array<MapData, ConfigRecord>,
    /// `stats`.
    pub stats: PerCpuArray<MapData, PodCounters>,
}

fn open(layout: &PinLayout, name: &str) -> Result<Map, EbpfError> {
    let path: PathBuf = layout.map(name);
    let data = MapData::from_pin(&path).map_err(|source| EbpfError::OpenPinnedMap {
        path: path.clone(),
        source: Box::new(source),
    })?;
    Map::from_map_data(data).map_err(|source| EbpfError::OpenPinnedMap {
        path,
        source: Box::new(source),
    })
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
    layout: &PinLayout,
    name: &str,
) -> Result<T, EbpfError> {
    T::try_from(open(layout, name)?).map_err(|source| EbpfError::OpenPinnedMap {
        path: layout.map(name),
        source: Box::new(source),
    })
}

/// How many pods the `pods` map pinned under `layout` holds at most (its `max_entries`, fixed
/// when it was created). Minimum kernel 4.13.
pub fn pod_capacity(layout: &PinLayout) -> Result<u32, EbpfError> {
    let path = layout.map(PODS_MAP);
    let data = MapData::from_pin(&path).map_err(|source| EbpfError::OpenPinnedMap {
        path: path.clone(),
        source: Box::new(source),
    })?;
    let info = data
        .info()
        .map_err(|source| EbpfError::map(PODS_MAP, "read the size of", source))?;
    Ok(info.max_entries())
}

impl PinnedMaps {
    /// Opens every map pinned under `layout` (they exist once a daemon or `enroll` ran).
    pub fn open(layout: &PinLayout) -> Result<Self, EbpfError> {
        Ok(Self {
            pods: typed(layout, PODS_MAP)?,
            workloads: typed(layout, WORKLOADS_MAP)?,
            original_destinations: typed(layout, ORIGINAL_DESTINATIONS_MAP)?,
            config: typed(layout, CONFIG_MAP)?,
            stats: typed(layout, STATS_MAP)?,
        })
    }

    /// The node configuration (zeroed, i.e. fail-closed, if never written).
    pub fn config(&self) -> Result<ConfigRecord, EbpfError> {
        self.config
            .get(&0, 0)
            .map_err(|source| EbpfError::map(CONFIG_MAP, "read", source))
    }

    /// Writes the node configuration with this fail mode and the built-in ports and marks.
    pub fn write_config(&mut self, fail_mode: u32, log_level: u32) -> Result<(), EbpfError> {
        let record = ConfigRecord {
            bypass_mark: BYPASS_MARK,
            upstream_mark: UPSTREAM_MARK,
            outbound_port: OUTBOUND_PORT,
            inbound_plaintext_port: INBOUND_PLAINTEXT_PORT,
            hbone_port: HBONE_PORT,
            padding: 0,
            fail_mode,
            log_level,
        };
        self.config
            .set(0, record, 0)
            .map_err(|source| EbpfError::map(CONFIG_MAP, "write", source))
    }

    /// A pod's counters summed over all CPUs.
    pub fn pod_counters(&self, index: u32) -> Result<PodCounters, EbpfError> {
        let per_cpu = self
            .stats
            .get(&index, 0)
            .map_err(|source| EbpfError::map(STATS_MAP, "read", source))?;
        Ok(per_cpu
            .iter()
            .fold(PodCounters::default(), |mut sum, counters| {
                sum.outbound_redirected += counters.outbound_redirected;
                sum.outbound_passed += counters.outbound_passed;
                sum.outbound_refused += counters.outbound_refused;
                sum.inbound_redirected += counters.inbound_redirected;
                sum.inbound_passed += counters.inbound_passed;
                sum.inbound_refused += counters.inbound_refused;
                sum
            }))
    }

    /// Zeroes a pod's counters (on enrollment and unenrollment, so a reused index starts clean).
    pub fn reset_pod_counters(&mut self, index: u32) -> Result<(), EbpfError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| EbpfError::Io {
            action: "count possible CPUs".into(),
            source,
        })?;
        let zeroes =
            PerCpuValues::try_from(vec![PodCounters::default(); cpus]).map_err(|source| {
                EbpfError::Io {
                    action: "build per-CPU zero values".into(),
                    source,
                }
            })?;
        self.stats
            .set(index, zeroes, 0)
            .map_err(|source| EbpfError::map(STATS_MAP, "write", source))
    }

    /// The original destination the kernel recorded for a connection accepted by an in-pod
    /// outbound listener: `client` is the accepted socket's peer, `listener` its local address.
    pub fn original_destination(
        &self,
        netns_cookie: u64,
        client: SocketAddr,
        listener: SocketAddr,
    ) -> Option<SocketAddr> {
        let (client_address, family) = address_bytes(client.ip());
        let (proxy_address, _) = address_bytes(listener.ip());
        let key = ConnectionKey {
            netns_cookie,
            client_address,
            proxy_address,
            client_port: client.port(),
            proxy_port: listener.port(),
            family,
            padding: 0,
        };
        let value = self.original_destinations.get(&key, 0).ok()?;
        Some(SocketAddr::new(
            socket_ip(&value.address, value.family)?,
            value.port,
        ))
    }
}

/// The 16-byte network-order form and family of an address, as the maps store it.
pub fn address_bytes(address: IpAddr) -> ([u8; 16], u16) {
    let mut bytes = [0u8; 16];
    match address {
        IpAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.octets());
            (bytes, FAMILY_IPV4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_IPV6),
    }
}

/// The address stored as 16 bytes and a family, if the family is known.
pub fn socket_ip(bytes: &[u8; 16], family: u16) -> Option<IpAddr> {
    match family {
        FAMILY_IPV4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        FAMILY_IPV6 => Some(IpAddr::V6(Ipv6Addr::from(*bytes))),
        _ => None,
    }
}

/// The `workloads` key of a pod IP.
pub fn workload_key(address: IpAddr) -> WorkloadKey {
    let (address, family) = address_bytes(address);
    WorkloadKey {
        address,
        family,
        padding: 0,
    }
}

/// The `pods` value of an enrolled pod: its stats slot, flags and its first IPv4 and first IPv6
/// address (the source the connect hooks bind a redirected socket to; zero when it has none).
pub fn pod_record(index: u32, flags: u32, ips: &[IpAddr]) -> PodRecord {
    let mut record = PodRecord {
        index,
        flags,
        ..PodRecord::default()
    };
    if let Some(IpAddr::V4(ipv4)) = ips.iter().find(|ip| ip.is_ipv4()) {
        record.ipv4 = ipv4.octets();
    }
    if let Some(IpAddr::V6(ipv6)) = ips.iter().find(|ip| ip.is_ipv6()) {
        record.ipv6 = ipv6.octets();
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_record_carries_the_first_address_of_each_family() {
        let ips: Vec<IpAddr> = ["2001:db8::10", "198.18.0.10", "198.18.0.11"]
            .iter()
            .map(|text| text.parse().unwrap())
            .collect();
        let record = pod_record(3, 1, &ips);
        assert_eq!((record.index, record.flags), (3, 1));
        assert_eq!(record.ipv4, [198, 18, 0, 10]);
        assert_eq!(
            record.ipv6,
            "2001:db8::10".parse::<Ipv6Addr>().unwrap().octets()
        );
        let only_v4 = pod_record(0, 0, &ips[1..2]);
        assert_eq!(only_v4.ipv6, [0; 16]);
    }

    #[test]
    fn addresses_round_trip_through_map_form() {
        for text in ["198.18.0.10", "2001:db8::10"] {
            let address: IpAddr = text.parse().unwrap();
            let (bytes, family) = address_bytes(address);
            assert_eq!(socket_ip(&bytes, family), Some(address));
        }
        assert_eq!(socket_ip(&[0; 16], 99), None);
    }

    #[test]
    fn ipv4_fills_the_first_four_bytes() {
        let key = workload_key("198.18.0.10".parse().unwrap());
        assert_eq!(&key.address[..4], &[198, 18, 0, 10]);
        assert_eq!(&key.address[4..], &[0; 12]);
        assert_eq!(key.family, FAMILY_IPV4);
    }
}

/// What the kernel does with an enrolled pod's traffic while ztunnel is not serving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Refuse it: nothing leaves the pod in plaintext (the default).
    #[default]
    Closed,
    /// Let it go direct.
    Open,
}

impl FailMode {
    /// The `config.fail_mode` value.
    pub fn record_value(self) -> u32 {
        match self {
            Self::Closed => ztunnel_common::FAIL_CLOSED,
            Self::Open => ztunnel_common::FAIL_OPEN,
        }
    }

    /// The mode a `config.fail_mode` value means (unknown values are treated as closed).
    pub fn from_record_value(value: u32) -> Self {
        if value == ztunnel_common::FAIL_OPEN {
            Self::Open
        } else {
            Self::Closed
        }
    }
}

impl std::str::FromStr for FailMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "closed" => Ok(Self::Closed),
            "open" => Ok(Self::Open),
            other => Err(format!(
                "unknown fail mode {other:?}: expected \"closed\" or \"open\""
            )),
        }
    }
}

impl std::fmt::Display for FailMode {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Self::Closed => "closed",
            Self::Open => "open",
        })
    }
}

/// Most verbose record the kernel programs emit (`config.log_level`); they reach `tracing` under
/// target `ztunnel::ebpf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum KernelLogLevel {
    /// Nothing.
    Off,
    /// Errors.
    Error,
    /// Warnings (e.g. a full original-destination map): the default.
    #[default]
    Warn,
    /// Informational records.
    Info,
    /// One record per redirected or refused connection (costly; for debugging).
    Debug,
}

impl KernelLogLevel {
    /// The `config.log_level` value.
    pub fn record_value(self) -> u32 {
        match self {
            Self::Off => ztunnel_common::LOG_LEVEL_OFF,
            Self::Error => ztunnel_common::LOG_LEVEL_ERROR,
            Self::Warn => ztunnel_common::LOG_LEVEL_WARN,
            Self::Info => ztunnel_common::LOG_LEVEL_INFO,
            Self::Debug => ztunnel_common::LOG_LEVEL_DEBUG,
        }
    }

    /// The level a `config.log_level` value means (above debug counts as debug).
    pub fn from_record_value(value: u32) -> Self {
        match value {
            ztunnel_common::LOG_LEVEL_OFF => Self::Off,
            ztunnel_common::LOG_LEVEL_ERROR => Self::Error,
            ztunnel_common::LOG_LEVEL_WARN => Self::Warn,
            ztunnel_common::LOG_LEVEL_INFO => Self::Info,
            _ => Self::Debug,
        }
    }
}

impl std::fmt::Display for KernelLogLevel {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Self::Off => "off",
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
        })
    }
}

#[cfg(test)]
mod fail_mode_tests {
    use super::FailMode;

    #[test]
    fn parses_both_modes_and_rejects_others() {
        assert_eq!("closed".parse::<FailMode>(), Ok(FailMode::Closed));
        assert_eq!("open".parse::<FailMode>(), Ok(FailMode::Open));
        assert!("Open".parse::<FailMode>().is_err());
        assert_eq!(
            FailMode::from_record_value(FailMode::Open.record_value()),
            FailMode::Open
        );
        assert_eq!(FailMode::from_record_value(7), FailMode::Closed);
    }

    #[test]
    fn kernel_log_levels_round_trip() {
        use super::KernelLogLevel;
        for level in [
            KernelLogLevel::Off,
            KernelLogLevel::Error,
            KernelLogLevel::Warn,
            KernelLogLevel::Info,
            KernelLogLevel::Debug,
        ] {
            assert_eq!(
                KernelLogLevel::from_record_value(level.record_value()),
                level
            );
        }
        assert_eq!(KernelLogLevel::from_record_value(99), KernelLogLevel::Debug);
        assert_eq!(KernelLogLevel::default().to_string(), "warn");
    }
}
