//! In-pod routing for connections to the application that keep the client's address.
//!
//! ztunnel connects to the application from the original source address (`IP_TRANSPARENT`,
//! marked [`UPSTREAM_MARK`]), so the application sees its real peer. The application's replies
//! are addressed to that remote peer and would leave the pod; instead, inside the pod netns:
//!
//! - `net.ipv4.tcp_fwmark_accept = 1`: the application's socket inherits the SYN's mark;
//! - `net.ipv4.fwmark_reflect = 1`, `net.ipv6.fwmark_reflect = 1`: so do the kernel's own
//!   replies without a socket — above all the RST of a port nobody listens on, which would
//!   otherwise leave the pod towards the remote client and leave ztunnel's connect hanging
//!   until its SYN retries run out, instead of failing at once (HBONE `503`);
//! - `ip rule add fwmark 0x111 lookup 133` and `ip route add local default dev lo table 133`
//!   (IPv4 and IPv6): marked replies are delivered locally, to ztunnel's socket.
//!
//! Another proxy (Istio's ztunnel) marks such sockets 0x539 instead and relies on connmark rules;
//! the connect hooks give a 0x539 socket that dials its own pod from a foreign address
//! [`UPSTREAM_MARK`] before its SYN leaves (`ztunnel-ebpf/src/return_path.rs`), so the same rule
//! serves it.
//!
//! No iptables, no conntrack. The bypass mark 0x539 is never routed to the local table: ztunnel's
//! own outbound sockets carry it and must leave the pod. Written with raw rtnetlink messages (a
//! rule and a route per family) rather than a netlink crate; minimum kernel 2.6.
//!
//! [`UPSTREAM_MARK`]: ztunnel_common::constants::UPSTREAM_MARK

use std::{io, os::fd::AsRawFd};

use ztunnel_common::constants::{UPSTREAM_MARK, UPSTREAM_ROUTE_TABLE, UPSTREAM_RULE_PRIORITY};

use super::netns::Netns;

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const FR_ACT_TO_TBL: u8 = 1;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_HOST: u8 = 254;
const RTN_LOCAL: u8 = 2;
/// `lo` is interface 1 in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// Installs the sysctl, rules and routes above in `netns`; idempotent. IPv6 parts are skipped
/// (with a warning) when IPv6 is disabled in the pod.
pub fn install_upstream_routing(netns: &Netns) -> io::Result<()> {
    netns.run(|| {
        std::fs::write("/proc/sys/net/ipv4/tcp_fwmark_accept", b"1")?;
        std::fs::write("/proc/sys/net/ipv4/fwmark_reflect", b"1")?;
        if let Err(error) = std::fs::write("/proc/sys/net/ipv6/fwmark_reflect", b"1") {
            tracing::warn!(%error, "cannot set net.ipv6.fwmark_reflect in pod (IPv6 off?)");
        }
        let socket = RouteSocket::open()?;
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let result = socket
                .request(RTM_NEWRULE, &rule_message(family))
                .and_then(|()| socket.request(RTM_NEWROUTE, &route_message(family)));
            match result {
                Ok(()) => {}
                Err(error) if family == libc::AF_INET6 as u8 => {
                    tracing::warn!(%error, "IPv6 upstream routing unavailable in pod (IPv6 off?)");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    })
}

/// Removes the rules and routes [`install_upstream_routing`] added (they are identified by our
/// mark, table and priority); absent ones are fine. The sysctls are left as they are: they
/// only let sockets and replies inherit a packet's mark, and their earlier values are unknown.
pub fn remove_upstream_routing(netns: &Netns) -> io::Result<()> {
    netns.run(|| {
        let socket = RouteSocket::open()?;
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            for (kind, body) in [
                (RTM_DELROUTE, route_message(family)),
                (RTM_DELRULE, rule_message(family)),
            ] {
                match socket.request(kind, &body) {
                    Ok(()) => {}
                    Err(error)
                        if matches!(
                            error.raw_os_error(),
                            Some(libc::ENOENT | libc::ESRCH | libc::EAFNOSUPPORT)
                        ) => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(())
    })
}

fn attribute(buffer: &mut Vec<u8>, kind: u16, value: u32) {
    buffer.extend_from_slice(&8u16.to_ne_bytes());
    buffer.extend_from_slice(&kind.to_ne_bytes());
    buffer.extend_from_slice(&value.to_ne_bytes());
}

/// `struct fib_rule_hdr` + attributes: `fwmark UPSTREAM_MARK/0xffffffff lookup TABLE`.
fn rule_message(family: u8) -> Vec<u8> {
    // family, dst_len, src_len, tos, table, res1, res2, action, flags (u32)
    let mut body = vec![family, 0, 0, 0, 0, 0, 0, FR_ACT_TO_TBL, 0, 0, 0, 0];
    attribute(&mut body, FRA_FWMARK, UPSTREAM_MARK);
    attribute(&mut body, FRA_FWMASK, u32::MAX);
    attribute(&mut body, FRA_TABLE, UPSTREAM_ROUTE_TABLE);
    attribute(&mut body, FRA_PRIORITY, UPSTREAM_RULE_PRIORITY);
    body
}

/// `struct rtmsg` + attributes: `local default dev lo table TABLE`.
fn route_message(family: u8) -> Vec<u8> {
    // family, dst_len, src_len, tos, table, protocol, scope, type, flags (u32)
    let mut body = vec![
        family,
        0,
        0,
        0,
        0,
        RTPROT_STATIC,
        RT_SCOPE_HOST,
        RTN_LOCAL,
        0,
        0,
        0,
        0,
    ];
    attribute(&mut body, RTA_TABLE, UPSTREAM_ROUTE_TABLE);
    attribute(&mut body, RTA_OIF, LOOPBACK_IFINDEX);
    body
}

struct RouteSocket {
    socket: std::os::fd::OwnedFd,
}

impl RouteSocket {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new socket nothing else owns.
        Ok(Self {
            socket: unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) },
        })
    }

    /// Sends one request and waits for its acknowledgement; for creation "already exists" is
    /// success.
    fn request(&self, kind: u16, body: &[u8]) -> io::Result<()> {
        let length = 16 + body.len();
        let flags = match kind {
            RTM_NEWRULE | RTM_NEWROUTE => NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            _ => NLM_F_REQUEST | NLM_F_ACK,
        };
        let mut message = Vec::with_capacity(length);
        message.extend_from_slice(&(length as u32).to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&flags.to_ne_bytes());
        message.extend_from_slice(&1u32.to_ne_bytes());
        message.extend_from_slice(&0u32.to_ne_bytes());
        message.extend_from_slice(body);
        // SAFETY: the buffer is valid for its length; the socket is open.
        let sent = unsafe {
            libc::send(
                self.socket.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut reply = [0u8; 1024];
        // SAFETY: the buffer is valid for its length; the socket is open.
        let received = unsafe {
            libc::recv(
                self.socket.as_raw_fd(),
                reply.as_mut_ptr().cast(),
                reply.len(),
                0,
            )
        };
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        if received < 20 || u16::from_ne_bytes([reply[4], reply[5]]) != NLMSG_ERROR {
            return Err(io::Error::other("unexpected rtnetlink reply"));
        }
        let code = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
        match code {
            0 => Ok(()),
            code if -code == libc::EEXIST => Ok(()),
            code => Err(io::Error::from_raw_os_error(-code)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_mark_table_and_loopback() {
        let rule = rule_message(libc::AF_INET as u8);
        assert_eq!(rule.len(), 12 + 4 * 8);
        assert_eq!(&rule[16..20], &UPSTREAM_MARK.to_ne_bytes());
        let route = route_message(libc::AF_INET6 as u8);
        assert_eq!(route[0], libc::AF_INET6 as u8);
        assert_eq!(route[7], RTN_LOCAL);
        assert_eq!(&route[16..20], &UPSTREAM_ROUTE_TABLE.to_ne_bytes());
        assert_eq!(&route[24..28], &LOOPBACK_IFINDEX.to_ne_bytes());
    }
}
