//! `traffic-probe <connect|session> <ip:port> <rounds> <interval-ms> <timeout-ms> <label>`: the
//! client side of [`ztunnel_e2e::traffic`]. Every `interval-ms` it sends one line
//! `<label> <round>\n` and waits for the same line back (an echo server answers), for `rounds`
//! rounds; `connect` opens a new TCP connection per round, `session` keeps one connection for
//! every round and closes it cleanly at the end. Every socket operation has the `timeout-ms`
//! deadline, so the probe cannot hang. It prints one line per round:
//!
//! `round=<n> at_ms=<unix ms at start> elapsed_us=<µs> outcome=<ok|refused|timeout|reset|closed|error> detail=<text>`
//!
//! and `done` when every round was attempted. A `session` stops at its first failure.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

fn main() -> anyhow::Result<()> {
    let arguments: Vec<String> = std::env::args().collect();
    let [_, mode, target, rounds, interval, timeout, label] = arguments.as_slice() else {
        anyhow::bail!(
            "usage: traffic-probe <connect|session> <ip:port> <rounds> <interval-ms> <timeout-ms> <label>"
        );
    };
    let target: SocketAddr = target.parse()?;
    let rounds: u32 = rounds.parse()?;
    let interval = Duration::from_millis(interval.parse()?);
    let timeout = Duration::from_millis(timeout.parse()?);
    let session = match mode.as_str() {
        "connect" => false,
        "session" => true,
        other => anyhow::bail!("unknown mode {other:?} (connect or session)"),
    };
    let start = Instant::now();
    let mut open: Option<TcpStream> = None;
    for round in 0..rounds {
        let due = start + interval * round;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_millis())
            .unwrap_or(0);
        let began = Instant::now();
        let message = format!("{label} {round}\n");
        let result = if session {
            let stream = match open.take() {
                Some(stream) => Ok(stream),
                None => connect(target, timeout),
            };
            stream.and_then(|mut stream| {
                exchange(&mut stream, message.as_bytes())?;
                if round + 1 == rounds {
                    close_cleanly(stream)?;
                } else {
                    open = Some(stream);
                }
                Ok(())
            })
        } else {
            connect(target, timeout).and_then(|mut stream| {
                exchange(&mut stream, message.as_bytes())?;
                close_cleanly(stream)
            })
        };
        let (outcome, detail) = match &result {
            Ok(()) => ("ok", String::new()),
            Err(Failure::Connect(error)) => (classify(error, true), error.to_string()),
            Err(Failure::Io(error)) => (classify(error, false), error.to_string()),
            Err(Failure::Closed(detail)) => ("closed", detail.clone()),
        };
        println!(
            "round={round} at_ms={at_ms} elapsed_us={} outcome={outcome} detail={}",
            began.elapsed().as_micros(),
            detail.replace(' ', "_")
        );
        if session && result.is_err() {
            return Ok(());
        }
    }
    println!("done");
    Ok(())
}

enum Failure {
    Connect(std::io::Error),
    Io(std::io::Error),
    Closed(String),
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Self::Io(error)
    }
}

fn connect(target: SocketAddr, timeout: Duration) -> Result<TcpStream, Failure> {
    let stream = TcpStream::connect_timeout(&target, timeout).map_err(Failure::Connect)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends `message` and reads back exactly as many bytes, which must be the same.
fn exchange(stream: &mut TcpStream, message: &[u8]) -> Result<(), Failure> {
    stream.write_all(message)?;
    let mut echoed = vec![0u8; message.len()];
    let mut read = 0;
    while read < echoed.len() {
        match stream.read(&mut echoed[read..])? {
            0 => {
                return Err(Failure::Closed(format!(
                    "end of stream after {read} of {} bytes",
                    message.len()
                )));
            }
            n => read += n,
        }
    }
    if echoed != message {
        return Err(Failure::Closed(format!(
            "answer {:?} is not the echo",
            String::from_utf8_lossy(&echoed)
        )));
    }
    Ok(())
}

/// Half-closes, then waits for the server's end of stream: a reset here counts.
fn close_cleanly(mut stream: TcpStream) -> Result<(), Failure> {
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut rest = [0u8; 64];
    match stream.read(&mut rest)? {
        0 => Ok(()),
        _ => Err(Failure::Closed("unexpected bytes after the echo".into())),
    }
}

fn classify(error: &std::io::Error, connecting: bool) -> &'static str {
    match error.kind() {
        ErrorKind::ConnectionRefused | ErrorKind::PermissionDenied if connecting => "refused",
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timeout",
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            "reset"
        }
        _ => "error",
    }
}
