//! The TCP socket under an HBONE TLS connection.
//!
//! rustls pulls ciphertext in reads of at most 4 KiB, so a 16 KiB record costs five `read`
//! system calls when it reads the socket directly. Reading through a buffer turns that into one
//! large `read` per burst and a few cheap copies out of it, which is what the perf profile of
//! `cargo xtask bench hbone` asked for. Writes are not buffered: rustls already hands whole
//! records to `writev`, and h2 flushes after every batch of frames.

use tokio::{io::BufReader, net::TcpStream};

/// How much one `read` on the HBONE socket may take in: a burst of full TLS records.
pub const READ_BUFFER: usize = 64 * 1024;

/// The socket as TLS sees it.
pub type Transport = BufReader<TcpStream>;

/// Wraps a connected HBONE socket for TLS.
pub fn transport(tcp: TcpStream) -> Transport {
    BufReader::with_capacity(READ_BUFFER, tcp)
}
