//! [`SocketFactory`] for one pod: sockets made inside the pod's netns, so connections leave with
//! the pod's address and routing, each marked with the bypass mark so capture never takes them.

use std::{io, sync::Arc};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpSocket;
use ztunnel_common::constants::{BYPASS_MARK, UPSTREAM_MARK};

use super::netns::Netns;
use crate::socket::SocketFactory;

/// Makes TCP sockets inside one pod's network namespace.
#[derive(Debug, Clone)]
pub struct PodSocketFactory {
    netns: Arc<Netns>,
}

impl PodSocketFactory {
    /// A factory for the pod whose namespace is `netns`.
    pub fn new(netns: Arc<Netns>) -> Self {
        Self { netns }
    }

    /// A socket to the pod's own application that keeps `source` (the remote client) as its
    /// address: `IP_TRANSPARENT`, bound to `source`'s IP (port chosen at connect time, so it
    /// cannot collide with the client's own connection) and marked [`UPSTREAM_MARK`] so that
    /// [`super::routing`] brings the application's replies back to it. Needs `CAP_NET_ADMIN`.
    pub fn new_upstream_socket(&self, source: std::net::IpAddr) -> io::Result<TcpSocket> {
        let socket = self.netns.run_here(move || {
            let domain = if source.is_ipv6() {
                Domain::IPV6
            } else {
                Domain::IPV4
            };
            let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
            socket.set_mark(UPSTREAM_MARK)?;
            if source.is_ipv6() {
                socket.set_ip_transparent_v6(true)?;
            } else {
                socket.set_ip_transparent_v4(true)?;
            }
            set_bind_address_no_port(&socket)?;
            socket.bind(&std::net::SocketAddr::new(source, 0).into())?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })?;
        Ok(TcpSocket::from_std_stream(std::net::TcpStream::from(
            socket,
        )))
    }
}

impl SocketFactory for PodSocketFactory {
    /// Each call enters the pod netns on the calling thread and comes back (see
    /// [`Netns::run_here`]).
    fn new_tcp_socket(&self, ipv6: bool) -> io::Result<TcpSocket> {
        let socket = self.netns.run_here(move || {
            let domain = if ipv6 { Domain::IPV6 } else { Domain::IPV4 };
            let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
            socket.set_mark(BYPASS_MARK)?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })?;
        Ok(TcpSocket::from_std_stream(std::net::TcpStream::from(
            socket,
        )))
    }
}

/// Makes a non-blocking listening socket inside `netns`, marked with the bypass mark.
///
/// `SO_REUSEPORT`: during an upgrade the new daemon opens the same listeners beside the old
/// one's (same user, so the kernel puts them in one reuseport group), so at every instant one of
/// them accepts; see [`super::takeover`]. Minimum kernel 3.9.
pub fn listen_in(
    netns: &Netns,
    address: std::net::SocketAddr,
    transparent: bool,
) -> io::Result<std::net::TcpListener> {
    let socket = netns.run(move || {
        let domain = if address.is_ipv6() {
            Domain::IPV6
        } else {
            Domain::IPV4
        };
        let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_mark(BYPASS_MARK)?;
        if address.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        if transparent {
            if address.is_ipv6() {
                socket.set_ip_transparent_v6(true)?;
            } else {
                socket.set_ip_transparent_v4(true)?;
            }
        }
        socket.bind(&address.into())?;
        socket.listen(1024)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    })?;
    Ok(socket.into())
}

/// `net.ipv4.tcp_migrate_req=1` in `netns` (it covers IPv6 too): when a listener of a
/// reuseport group closes — the old daemon's, in an upgrade — the connections in its accept
/// queue and its half-open ones move to another listener of the group instead of being reset.
/// Minimum kernel 5.14.
pub fn enable_request_migration(netns: &Netns) -> io::Result<()> {
    netns.run(|| std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", b"1"))
}

/// `IP_BIND_ADDRESS_NO_PORT`: defer the local port choice to `connect()`, which checks the whole
/// 4-tuple. Minimum kernel 4.2.
fn set_bind_address_no_port(socket: &Socket) -> io::Result<()> {
    const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;
    let enable: libc::c_int = 1;
    // SAFETY: valid socket fd; the option value is a live c_int whose size is passed.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            libc::IPPROTO_IP,
            IP_BIND_ADDRESS_NO_PORT,
            (&enable as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
