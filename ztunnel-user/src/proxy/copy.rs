//! The TCP↔TCP copy loop (passthrough and plaintext inbound): one fixed buffer per direction
//! per connection, half-close propagated.

use tokio::net::TcpStream;

use crate::hbone::Transferred;

/// Size of each direction's buffer.
const BUFFER_SIZE: usize = 64 * 1024;

/// Copies both ways until both have ended; `sent` is `client` → `upstream`.
pub async fn copy_tcp(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
) -> (Transferred, std::io::Result<()>) {
    match tokio::io::copy_bidirectional_with_sizes(client, upstream, BUFFER_SIZE, BUFFER_SIZE).await
    {
        Ok((sent, received)) => (Transferred { sent, received }, Ok(())),
        Err(error) => (Transferred::default(), Err(error)),
    }
}
