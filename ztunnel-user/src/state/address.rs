//! Addresses as Istio's local configuration writes them: `network/ip` for VIPs and waypoint
//! addresses, `namespace/hostname` for a waypoint named by its service.

use std::{fmt, net::IpAddr, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IP address on a network, written `network/ip` (the network is usually empty: `/10.0.0.1`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkAddress {
    /// The network name; empty for the default network.
    pub network: String,
    /// The address.
    pub address: IpAddr,
}

/// A service named by namespace and hostname, written `namespace/hostname`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespacedHostname {
    /// The service's namespace.
    pub namespace: String,
    /// The service's hostname, e.g. `waypoint.default.svc.cluster.local`.
    pub hostname: String,
}

/// Where a waypoint is: an address, or the service that fronts its replicas.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GatewayDestination {
    /// A single address (`network/ip`).
    Address(NetworkAddress),
    /// A service whose endpoints are the waypoint replicas (`namespace/hostname`).
    Hostname(NamespacedHostname),
}

/// A waypoint reference, as carried by a workload or a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayAddress {
    /// The waypoint itself.
    pub destination: GatewayDestination,
    /// The port the waypoint accepts HBONE on (15008 in Istio).
    pub hbone_mtls_port: u16,
}

/// Why an address string is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// No `/` separates the network or namespace from the rest.
    #[error("{0:?} has no '/': write network/ip (e.g. \"/10.0.0.1\") or namespace/hostname")]
    MissingSlash(String),
    /// The part after the `/` is not an IP address.
    #[error("{0:?} is not network/ip: the part after '/' is not an IP address")]
    NotAnIp(String),
    /// Namespace or hostname is empty.
    #[error("{0:?} is not namespace/hostname: both parts must be non-empty")]
    EmptyPart(String),
}

impl FromStr for NetworkAddress {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (network, address) = text
            .split_once('/')
            .ok_or_else(|| AddressError::MissingSlash(text.to_owned()))?;
        let address = address
            .parse()
            .map_err(|_| AddressError::NotAnIp(text.to_owned()))?;
        Ok(Self {
            network: network.to_owned(),
            address,
        })
    }
}

impl fmt::Display for NetworkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.address)
    }
}

impl FromStr for NamespacedHostname {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (namespace, hostname) = text
            .split_once('/')
            .ok_or_else(|| AddressError::MissingSlash(text.to_owned()))?;
        if namespace.is_empty() || hostname.is_empty() {
            return Err(AddressError::EmptyPart(text.to_owned()));
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            hostname: hostname.to_owned(),
        })
    }
}

impl fmt::Display for NamespacedHostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.hostname)
    }
}

impl FromStr for GatewayDestination {
    type Err = AddressError;

    /// `network/ip` when the part after the slash is an IP address, else `namespace/hostname`
    /// (Istio's local configuration tells the two apart the same way).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.parse::<NetworkAddress>() {
            Ok(address) => Ok(Self::Address(address)),
            Err(AddressError::NotAnIp(_)) => text.parse().map(Self::Hostname),
            Err(other) => Err(other),
        }
    }
}

impl fmt::Display for GatewayDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(address) => address.fmt(f),
            Self::Hostname(hostname) => hostname.fmt(f),
        }
    }
}

/// Serializes and deserializes a `FromStr + Display` type as a string.
macro_rules! string_serde {
    ($type:ty) => {
        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

string_serde!(NetworkAddress);
string_serde!(NamespacedHostname);
string_serde!(GatewayDestination);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_network_addresses() {
        let address: NetworkAddress = "/127.10.0.1".parse().unwrap();
        assert_eq!(address.network, "");
        assert_eq!(address.address, "127.10.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(address.to_string(), "/127.10.0.1");
        let address: NetworkAddress = "remote/2001:db8::1".parse().unwrap();
        assert_eq!(address.network, "remote");
        assert_eq!(address.to_string(), "remote/2001:db8::1");
    }

    #[test]
    fn rejects_malformed_network_addresses() {
        assert_eq!(
            "127.0.0.1".parse::<NetworkAddress>(),
            Err(AddressError::MissingSlash("127.0.0.1".into()))
        );
        assert_eq!(
            "/not-ip".parse::<NetworkAddress>(),
            Err(AddressError::NotAnIp("/not-ip".into()))
        );
    }

    #[test]
    fn tells_waypoint_addresses_from_hostnames() {
        assert!(matches!(
            "/198.18.0.9".parse::<GatewayDestination>(),
            Ok(GatewayDestination::Address(_))
        ));
        let destination: GatewayDestination = "default/waypoint.default.svc.cluster.local"
            .parse()
            .unwrap();
        assert_eq!(
            destination,
            GatewayDestination::Hostname(NamespacedHostname {
                namespace: "default".into(),
                hostname: "waypoint.default.svc.cluster.local".into(),
            })
        );
        assert!("/waypoint".parse::<GatewayDestination>().is_err());
        assert!("waypoint".parse::<GatewayDestination>().is_err());
    }
}
