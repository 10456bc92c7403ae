//! `marked-connect <mark> <ip:port>`: connects with `SO_MARK` set, sends an HTTP/1.0 GET, prints
//! the response and then `peer=<address the socket is connected to>`.

use std::{
    io::{Read, Write},
    net::SocketAddr,
};

fn main() -> anyhow::Result<()> {
    let arguments: Vec<String> = std::env::args().collect();
    let [_, mark, destination] = arguments.as_slice() else {
        anyhow::bail!("usage: marked-connect <mark> <ip:port>");
    };
    let mark: u32 = parse_mark(mark)?;
    let destination: SocketAddr = destination.parse()?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(destination),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_mark(mark)?;
    socket.connect_timeout(&destination.into(), std::time::Duration::from_secs(5))?;
    let mut stream = std::net::TcpStream::from(socket);
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    print!("{response}");
    println!("peer={}", stream.peer_addr()?);
    Ok(())
}

fn parse_mark(text: &str) -> anyhow::Result<u32> {
    Ok(match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16)?,
        None => text.parse()?,
    })
}
