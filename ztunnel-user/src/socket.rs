//! Where ztunnel's own sockets are made.
//!
//! Every socket ztunnel opens carries [`BYPASS_MARK`] so the capture hooks never take it. A
//! [`SocketFactory`] decides in which network namespace a socket is created: the host's (tests,
//! waypoints) or an enrolled pod's (`inpod` implements that one), so that outbound HBONE
//! connections leave with the pod's own address and routing.

use std::io;

use tokio::net::TcpSocket;
use ztunnel_common::constants::BYPASS_MARK;

/// Makes the TCP sockets ztunnel uses to reach peers and applications.
pub trait SocketFactory: Send + Sync + 'static {
    /// A new, unbound, unconnected TCP socket for `ipv6` or IPv4, already marked with
    /// [`BYPASS_MARK`].
    fn new_tcp_socket(&self, ipv6: bool) -> io::Result<TcpSocket>;
}

/// Creates sockets in the network namespace ztunnel itself runs in.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostSocketFactory;

impl SocketFactory for HostSocketFactory {
    fn new_tcp_socket(&self, ipv6: bool) -> io::Result<TcpSocket> {
        let socket = if ipv6 {
            TcpSocket::new_v6()?
        } else {
            TcpSocket::new_v4()?
        };
        set_mark(&socket, BYPASS_MARK)?;
        Ok(socket)
    }
}

/// Test stand-in for a pod simulated as an address of ztunnel's own netns (loopback tests and
/// benchmarks): sockets are made in the host netns and bound to the pod's address, so outbound
/// HBONE connections leave from it as they do from inside a real pod's netns (a destination
/// refuses a `forwarded` source that the connection does not come from, see
/// `proxy::forwarded`). Unlike [`SocketFactory`]'s contract the sockets come bound: use it for
/// a pod's outbound side only (connections to an application bind their own source).
#[cfg(feature = "testing")]
#[derive(Debug, Clone, Copy)]
pub struct PodAddressSockets(pub std::net::IpAddr);

#[cfg(feature = "testing")]
impl SocketFactory for PodAddressSockets {
    fn new_tcp_socket(&self, ipv6: bool) -> io::Result<TcpSocket> {
        let socket = HostSocketFactory.new_tcp_socket(ipv6)?;
        if self.0.is_ipv6() == ipv6 {
            socket.bind(std::net::SocketAddr::new(self.0, 0))?;
        }
        Ok(socket)
    }
}

/// Sets `SO_MARK` on a socket (needs `CAP_NET_ADMIN`; minimum kernel 2.6.25).
pub fn set_mark(socket: &impl std::os::fd::AsFd, mark: u32) -> io::Result<()> {
    socket2::SockRef::from(socket).set_mark(mark)
}
