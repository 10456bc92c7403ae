//! Connecting to the local application, from the original source address when possible.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
};

use tokio::net::TcpStream;
use ztunnel_common::constants::UPSTREAM_MARK;

use crate::socket::{SocketFactory, set_mark};

/// Connects to `destination` from `source_ip` (any port) with `IP_TRANSPARENT` and
/// [`UPSTREAM_MARK`], so the application sees its real peer. If the platform refuses
/// (no `CAP_NET_ADMIN`, address not routable back), connects from the pod's own address
/// instead and says so once.
pub async fn connect_from(
    sockets: &dyn SocketFactory,
    source_ip: Option<IpAddr>,
    destination: SocketAddr,
) -> io::Result<TcpStream> {
    if let Some(source_ip) = source_ip.filter(|ip| ip.is_ipv6() == destination.is_ipv6()) {
        match transparent_socket(sockets, source_ip, destination.is_ipv6()) {
            Ok(socket) => {
                return socket.connect(destination).await.inspect(|stream| {
                    let _ = stream.set_nodelay(true);
                });
            }
            Err(error) => {
                static LOGGED: AtomicBool = AtomicBool::new(false);
                if !LOGGED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%error, %source_ip, "cannot keep the original source address (IP_TRANSPARENT); connecting to applications from the pod's own address");
                }
            }
        }
    }
    let stream = sockets
        .new_tcp_socket(destination.is_ipv6())?
        .connect(destination)
        .await?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn transparent_socket(
    sockets: &dyn SocketFactory,
    source_ip: IpAddr,
    ipv6: bool,
) -> io::Result<tokio::net::TcpSocket> {
    let socket = sockets.new_tcp_socket(ipv6)?;
    set_mark(&socket, UPSTREAM_MARK)?;
    let options = socket2::SockRef::from(&socket);
    if ipv6 {
        options.set_ip_transparent_v6(true)?;
    } else {
        options.set_ip_transparent_v4(true)?;
    }
    socket.bind(SocketAddr::new(source_ip, 0))?;
    Ok(socket)
}
