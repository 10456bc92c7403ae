//! Nodes and pods as network namespaces. A node is a netns with a bridge `br0`; each pod is a
//! netns whose `eth0` is a veth whose peer sits on the node's bridge. No default route anywhere,
//! so nothing can leave the simulated network. Reusable for multi-node topologies: a node's
//! bridge can be joined to an underlay later.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
};

use crate::env::checked;

/// A network namespace created by the harness and deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// Its name under /var/run/netns.
    pub name: String,
}

impl Netns {
    /// `ip netns add name`.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        checked(Command::new("ip").args(["netns", "add", name]))?;
        let netns = Self { name: name.into() };
        checked(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
        Ok(netns)
    }

    /// Runs `ip -n <name> <args>`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        checked(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A simulated node.
#[derive(Debug)]
pub struct Node {
    /// The node's netns.
    pub netns: Netns,
    /// Third octet of its pods' addresses.
    pub index: u8,
}

impl Node {
    /// Creates the node netns and its bridge.
    pub fn create(name: &str, index: u8) -> anyhow::Result<Self> {
        let netns = Netns::create(name)?;
        netns.ip(&["link", "add", "br0", "type", "bridge"])?;
        netns.ip(&["link", "set", "br0", "up"])?;
        Ok(Self { netns, index })
    }

    /// A pod on this node with addresses 198.18.`index`.`host`/24 and 2001:db8:`index`::`host`/64
    /// on its `eth0`.
    pub fn pod(&self, name: &str, host: u8) -> anyhow::Result<Pod> {
        let netns = Netns::create(&format!("{}-{name}", self.netns.name))?;
        let peer = format!("v{host}");
        self.netns.ip(&[
            "link",
            "add",
            &peer,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &netns.name,
        ])?;
        self.netns
            .ip(&["link", "set", &peer, "master", "br0", "up"])?;
        let ip = Ipv4Addr::new(198, 18, self.index, host);
        netns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        let ipv6 = Ipv6Addr::new(
            0x2001,
            0xdb8,
            u16::from(self.index),
            0,
            0,
            0,
            0,
            u16::from(host),
        );
        netns.ip(&["addr", "add", &format!("{ipv6}/64"), "dev", "eth0", "nodad"])?;
        netns.ip(&["link", "set", "eth0", "up"])?;
        println!(
            "pod {name}: netns {}, eth0 {ip}/24 {ipv6}/64 on bridge of {}",
            netns.name, self.netns.name
        );
        Ok(Pod {
            name: name.into(),
            ip,
            ipv6,
            netns: netns.name.clone(),
            _netns: netns,
        })
    }
}

/// A simulated pod.
#[derive(Debug)]
pub struct Pod {
    /// Pod name (also the ztunnel enrollment name).
    pub name: String,
    /// Its IPv4 address.
    pub ip: Ipv4Addr,
    /// Its IPv6 address (2001:db8:`node`::`host`).
    pub ipv6: Ipv6Addr,
    /// Its netns name.
    pub netns: String,
    _netns: Netns,
}

impl Pod {
    /// The netns file path ztunnel is given.
    pub fn netns_path(&self) -> String {
        format!("/var/run/netns/{}", self.netns)
    }

    /// TCP segments received in this pod's netns so far (`Tcp: InSegs` of /proc/net/snmp): a
    /// counter at the destination that moves if any SYN arrives.
    pub fn tcp_segments_received(&self) -> anyhow::Result<u64> {
        let snmp = checked(Command::new("ip").args([
            "netns",
            "exec",
            &self.netns,
            "cat",
            "/proc/net/snmp",
        ]))?;
        let mut tcp_lines = snmp.lines().filter(|line| line.starts_with("Tcp:"));
        let (Some(header), Some(values)) = (tcp_lines.next(), tcp_lines.next()) else {
            anyhow::bail!("no Tcp lines in /proc/net/snmp of {}", self.netns);
        };
        let column = header
            .split_whitespace()
            .position(|name| name == "InSegs")
            .ok_or_else(|| anyhow::anyhow!("no InSegs column"))?;
        Ok(values
            .split_whitespace()
            .nth(column)
            .ok_or_else(|| anyhow::anyhow!("short Tcp line"))?
            .parse()?)
    }
}
