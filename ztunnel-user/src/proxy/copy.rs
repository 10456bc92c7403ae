//! The TCP↔TCP copy loop (passthrough and plaintext inbound): one fixed buffer per direction
//! per connection, half-close propagated, closed when idle.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::hbone::{
    Transferred,
    idle::{Activity, idle_error},
};

/// Size of each direction's buffer.
const BUFFER_SIZE: usize = 64 * 1024;

/// Copies both ways until both have ended, or until no byte moved either way for
/// `idle_timeout`; `sent` is `client` → `upstream`.
pub async fn copy_tcp(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    idle_timeout: Duration,
) -> (Transferred, io::Result<()>) {
    copy_tcp_until(client, upstream, idle_timeout, std::future::pending()).await
}

/// Like [`copy_tcp`], and also ends when `stop` resolves, with an error of kind
/// `ConnectionAborted` carrying its reason.
pub async fn copy_tcp_until(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    idle_timeout: Duration,
    stop: impl Future<Output = &'static str>,
) -> (Transferred, io::Result<()>) {
    let activity = Activity::new();
    let mut client = Counted::new(client, &activity);
    let mut upstream = Counted::new(upstream, &activity);
    let result = tokio::select! {
        result = tokio::io::copy_bidirectional_with_sizes(
            &mut client, &mut upstream, BUFFER_SIZE, BUFFER_SIZE) => result.map(|_| ()),
        () = activity.idle_for(idle_timeout) => Err(idle_error(idle_timeout)),
        reason = stop => Err(io::Error::new(io::ErrorKind::ConnectionAborted, reason)),
    };
    let transferred = Transferred {
        sent: client.read,
        received: upstream.read,
    };
    (transferred, result)
}

/// A socket that counts what is read from it and reports activity.
struct Counted<'a> {
    stream: &'a mut TcpStream,
    activity: &'a Activity,
    read: u64,
}

impl<'a> Counted<'a> {
    fn new(stream: &'a mut TcpStream, activity: &'a Activity) -> Self {
        Self {
            stream,
            activity,
            read: 0,
        }
    }
}

impl AsyncRead for Counted<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut *this.stream).poll_read(cx, buf);
        let count = buf.filled().len() - before;
        if count > 0 {
            this.read += count as u64;
            this.activity.touch();
        }
        poll
    }
}

impl AsyncWrite for Counted<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().stream).poll_shutdown(cx)
    }
}
