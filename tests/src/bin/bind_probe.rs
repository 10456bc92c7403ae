//! `bind-probe <ip:port>...`: for each address, opens a TCP socket, binds and listens, then
//! prints `<address> ok` or `<address> error <errno> <message>` on one line. IPv6 sockets are
//! IPv6-only, so `[::]:p` and `0.0.0.0:p` are separate probes. The exit status is 0 whenever every
//! argument parsed: the caller judges the outcomes.

use std::net::SocketAddr;

fn main() -> anyhow::Result<()> {
    let addresses: Vec<SocketAddr> = std::env::args()
        .skip(1)
        .map(|text| {
            text.parse()
                .map_err(|error| anyhow::anyhow!("bad address {text:?}: {error}"))
        })
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!addresses.is_empty(), "usage: bind-probe <ip:port>...");
    // Hold every socket until the end, so one probe cannot release a port for the next.
    let mut held = Vec::new();
    for address in addresses {
        match bind_and_listen(address) {
            Ok(socket) => {
                println!("{address} ok");
                held.push(socket);
            }
            Err(error) => println!(
                "{address} error {} {error}",
                error.raw_os_error().unwrap_or(0)
            ),
        }
    }
    Ok(())
}

fn bind_and_listen(address: SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        None,
    )?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&address.into())?;
    socket.listen(16)?;
    Ok(socket)
}
