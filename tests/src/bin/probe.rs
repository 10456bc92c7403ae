//! `probe <ip:port> <count> <interval-ms> <timeout-ms> <expected-text>`: a new TCP connection
//! every interval (fixed cadence from the start), an HTTP/1.0 GET on each, read to EOF within
//! the timeout. One line per request, then a summary line; `ztunnel_e2e::probe` parses both.
//!
//! `probe seq=3 at_ms=<unix ms> outcome=ok|refused|reset|timeout|closed|bad_response|error latency_ms=1.2`

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

fn main() -> anyhow::Result<()> {
    let arguments: Vec<String> = std::env::args().collect();
    let [_, target, count, interval, timeout, expected] = arguments.as_slice() else {
        anyhow::bail!("usage: probe <ip:port> <count> <interval-ms> <timeout-ms> <expected-text>");
    };
    let target: SocketAddr = target.parse()?;
    let count: u32 = count.parse()?;
    let interval = Duration::from_millis(interval.parse()?);
    let timeout = Duration::from_millis(timeout.parse()?);
    let start = Instant::now();
    let (mut ok, mut failed) = (0u32, 0u32);
    for sequence in 0..count {
        let due = start + interval * sequence;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_millis())
            .unwrap_or(0);
        let began = Instant::now();
        let outcome = request(target, timeout, expected);
        let latency_ms = began.elapsed().as_secs_f64() * 1000.0;
        if outcome == "ok" {
            ok += 1;
        } else {
            failed += 1;
        }
        println!("probe seq={sequence} at_ms={at_ms} outcome={outcome} latency_ms={latency_ms:.2}");
    }
    println!("probe summary sent={count} ok={ok} failed={failed}");
    Ok(())
}

fn request(target: SocketAddr, timeout: Duration, expected: &str) -> &'static str {
    let mut stream = match TcpStream::connect_timeout(&target, timeout) {
        Ok(stream) => stream,
        Err(error) => return classify(&error),
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    if let Err(error) = stream.write_all(b"GET / HTTP/1.0\r\n\r\n") {
        return classify(&error);
    }
    let mut response = String::new();
    if let Err(error) = stream.read_to_string(&mut response) {
        return classify(&error);
    }
    if response.starts_with("HTTP/1.1 200") && response.contains(expected) {
        "ok"
    } else if response.is_empty() {
        "closed"
    } else {
        "bad_response"
    }
}

fn classify(error: &std::io::Error) -> &'static str {
    match error.kind() {
        ErrorKind::ConnectionRefused => "refused",
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            "reset"
        }
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timeout",
        _ => "error",
    }
}
