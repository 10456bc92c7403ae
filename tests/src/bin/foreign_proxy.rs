//! Another proxy on our capture, with the socket habits of Istio's ztunnel, so the kernel side
//! is proved without it:
//!
//! - `foreign-proxy outbound <connections>`: marks its socket 0x539, listens on the dual-stack
//!   `[::]:15001`, and for each accepted connection asks the original destination as Istio's
//!   ztunnel does (`SOL_IP`/`SO_ORIGINAL_DST`, then `SOL_IPV6`/`IP6T_SO_ORIGINAL_DST`), prints
//!   `accepted peer=… local=… original_destination=…` and answers the client with the same line
//!   as an HTTP/1.0 response. Prints `listening` once it listens.
//! - `foreign-proxy upstream <source ip> <destination ip:port>`: an original-source connection
//!   to the application: marks its socket 0x539, `IP_TRANSPARENT`, binds the (foreign) source,
//!   connects within 5 s, sends an HTTP/1.0 GET and prints `mark=0x… response=…`.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use socket2::{Domain, SockRef, Socket, Type};

/// Istio's ztunnel marks every socket it opens with this (as ours does).
const BYPASS_MARK: u32 = 0x539;
const OUTBOUND_PORT: u16 = 15001;

fn main() -> anyhow::Result<()> {
    let arguments: Vec<String> = std::env::args().collect();
    match arguments.as_slice() {
        [_, command, connections] if command == "outbound" => outbound(connections.parse()?),
        [_, command, source, destination] if command == "upstream" => {
            upstream(source.parse()?, destination.parse()?)
        }
        _ => anyhow::bail!(
            "usage: foreign-proxy outbound <connections> | upstream <source ip> <destination ip:port>"
        ),
    }
}

fn outbound(connections: usize) -> anyhow::Result<()> {
    let socket = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    socket.set_only_v6(false)?;
    socket.set_mark(BYPASS_MARK)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, OUTBOUND_PORT)).into())?;
    socket.listen(16)?;
    let listener = TcpListener::from(socket);
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    for _ in 0..connections {
        let (mut stream, peer) = listener.accept()?;
        let line = format!(
            "accepted peer={peer} local={} original_destination={}",
            stream.local_addr()?,
            original_destination(&stream)
        );
        println!("{line}");
        std::io::stdout().flush()?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request)?;
        let body = format!("{line}\n");
        write!(
            stream,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
    }
    Ok(())
}

/// The original destination the way Istio's ztunnel reads it (both options, IPv4 first), or the
/// two errors.
fn original_destination(stream: &TcpStream) -> String {
    let socket = SockRef::from(stream);
    match socket.original_dst_v4() {
        Ok(address) => format_address(address.as_socket()),
        Err(v4_error) => match socket.original_dst_v6() {
            Ok(address) => format_address(address.as_socket()),
            Err(v6_error) => format!("none(SOL_IP: {v4_error}; SOL_IPV6: {v6_error})"),
        },
    }
}

fn format_address(address: Option<SocketAddr>) -> String {
    address.map_or_else(|| "not-an-inet-address".to_owned(), |a| a.to_string())
}

fn upstream(source: IpAddr, destination: SocketAddr) -> anyhow::Result<()> {
    let socket = Socket::new(Domain::for_address(destination), Type::STREAM, None)?;
    socket.set_mark(BYPASS_MARK)?;
    if source.is_ipv4() {
        socket.set_ip_transparent_v4(true)?;
    } else {
        socket.set_ip_transparent_v6(true)?;
    }
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&destination.into(), Duration::from_secs(5))?;
    let mark = socket.mark()?;
    let mut stream = TcpStream::from(socket);
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    println!(
        "mark={mark:#x} local={} response={response:?}",
        stream.local_addr()?
    );
    Ok(())
}
