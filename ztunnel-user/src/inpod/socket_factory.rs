//! [`SocketFactory`] for one pod: sockets made inside the pod's netns, so connections leave with
//! the pod's address and routing, each marked with the bypass mark so capture never takes them.

use std::{io, sync::Arc};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpSocket;
use ztunnel_common::constants::BYPASS_MARK;

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
}

impl SocketFactory for PodSocketFactory {
    /// Each call enters the pod netns on a short-lived thread (see [`Netns::run`]).
    fn new_tcp_socket(&self, ipv6: bool) -> io::Result<TcpSocket> {
        let socket = self.netns.run(move || {
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
