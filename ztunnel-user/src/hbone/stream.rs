//! One HBONE tunnel (an HTTP/2 stream) and the copy loop between it and a TCP socket.
//!
//! The copy loop reads from TCP into one buffer per tunnel and hands h2 frozen slices of it;
//! once h2 has written the earlier slices, `reserve` reclaims the same allocation, so forwarding
//! a chunk allocates nothing. Half-close is propagated both ways: TCP EOF becomes `END_STREAM`,
//! and `END_STREAM` becomes a TCP write shutdown.

use std::{
    future::poll_fn,
    io,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use super::idle::{Activity, idle_error};

/// Size of the per-tunnel read buffer.
const BUFFER_SIZE: usize = 256 * 1024;
/// Reclaim or grow the buffer when less than this is free.
const MIN_READ: usize = 16 * 1024;

/// Bytes moved by a finished tunnel.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    /// From the local TCP socket into the tunnel.
    pub sent: u64,
    /// From the tunnel to the local TCP socket.
    pub received: u64,
}

/// One established tunnel: the two halves of an HTTP/2 stream.
#[derive(Debug)]
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Released when the tunnel ends (a pool slot, for instance).
    _guard: Option<Box<dyn std::any::Any + Send + Sync>>,
    /// What the other side's `baggage` header said about it (empty if it sent none).
    peer_baggage: super::baggage::Baggage,
}

impl H2Stream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            _guard: None,
            peer_baggage: super::baggage::Baggage::default(),
        }
    }

    pub(crate) fn with_peer_baggage(mut self, baggage: super::baggage::Baggage) -> Self {
        self.peer_baggage = baggage;
        self
    }

    /// What the other side's `baggage` header said about it (empty if it sent none).
    pub fn peer_baggage(&self) -> &super::baggage::Baggage {
        &self.peer_baggage
    }

    pub(crate) fn with_guard(mut self, guard: impl std::any::Any + Send + Sync) -> Self {
        self._guard = Some(Box::new(guard));
        self
    }

    /// Copies between `tcp` and the tunnel until both directions have ended, or one failed (then
    /// the other is abandoned and the stream reset), or no byte moved either way for
    /// `idle_timeout` (then both sides are closed: the stream reset, the socket dropped).
    pub async fn copy_with(
        self,
        tcp: &mut TcpStream,
        idle_timeout: Duration,
    ) -> (Transferred, io::Result<()>) {
        self.copy_until(tcp, idle_timeout, std::future::pending())
            .await
    }

    /// Like [`copy_with`](Self::copy_with), and also ends (stream reset, socket dropped) when
    /// `stop` resolves, with an error of kind `ConnectionAborted` carrying its reason.
    pub async fn copy_until(
        mut self,
        tcp: &mut TcpStream,
        idle_timeout: Duration,
        stop: impl Future<Output = &'static str>,
    ) -> (Transferred, io::Result<()>) {
        let (mut read, mut write) = tcp.split();
        let sent = AtomicU64::new(0);
        let received = AtomicU64::new(0);
        let activity = Activity::new();
        let result = {
            let outgoing = tcp_to_h2(&mut read, &mut self.send, &sent, &activity);
            let incoming = h2_to_tcp(&mut self.recv, &mut write, &received, &activity);
            tokio::select! {
                result = first_error(outgoing, incoming) => result,
                () = activity.idle_for(idle_timeout) => Err(idle_error(idle_timeout)),
                reason = stop => Err(io::Error::new(io::ErrorKind::ConnectionAborted, reason)),
            }
        };
        if result.is_err() {
            // Tell the peer the tunnel failed rather than leaving it half open.
            self.send.send_reset(h2::Reason::CANCEL);
        }
        let transferred = Transferred {
            sent: sent.load(Ordering::Relaxed),
            received: received.load(Ordering::Relaxed),
        };
        (transferred, result)
    }
}

impl H2Stream {
    /// Joins this tunnel to `onward` (a waypoint's two hops) until both directions have ended,
    /// or one failed (then both streams are reset). `sent` counts bytes from this tunnel into
    /// `onward`, `received` the way back.
    pub async fn splice(self, onward: H2Stream) -> (Transferred, io::Result<()>) {
        self.splice_until(onward, std::future::pending()).await
    }

    /// Like [`splice`](Self::splice), and also ends (both streams reset) when `stop` resolves,
    /// with an error of kind `ConnectionAborted` carrying its reason.
    pub async fn splice_until(
        mut self,
        mut onward: H2Stream,
        stop: impl Future<Output = &'static str>,
    ) -> (Transferred, io::Result<()>) {
        let sent = AtomicU64::new(0);
        let received = AtomicU64::new(0);
        let result = {
            let forward = h2_to_h2(&mut self.recv, &mut onward.send, &sent);
            let backward = h2_to_h2(&mut onward.recv, &mut self.send, &received);
            tokio::select! {
                result = first_error(forward, backward) => result,
                reason = stop => Err(io::Error::new(io::ErrorKind::ConnectionAborted, reason)),
            }
        };
        if result.is_err() {
            self.send.send_reset(h2::Reason::CANCEL);
            onward.send.send_reset(h2::Reason::CANCEL);
        }
        let transferred = Transferred {
            sent: sent.load(Ordering::Relaxed),
            received: received.load(Ordering::Relaxed),
        };
        (transferred, result)
    }
}

/// Runs both directions; returns when both succeeded or as soon as one failed.
pub(crate) async fn first_error(
    first: impl Future<Output = io::Result<()>>,
    second: impl Future<Output = io::Result<()>>,
) -> io::Result<()> {
    tokio::pin!(first, second);
    let (mut first_done, mut second_done) = (false, false);
    while !(first_done && second_done) {
        tokio::select! {
            result = &mut first, if !first_done => { result?; first_done = true; }
            result = &mut second, if !second_done => { result?; second_done = true; }
        }
    }
    Ok(())
}

async fn tcp_to_h2(
    read: &mut (impl AsyncRead + Unpin),
    send: &mut SendStream<Bytes>,
    total: &AtomicU64,
    activity: &Activity,
) -> io::Result<()> {
    let mut buffer = BytesMut::with_capacity(BUFFER_SIZE);
    loop {
        if buffer.capacity() < MIN_READ {
            // Reuses the original allocation once h2 has dropped every slice handed to it.
            buffer.reserve(BUFFER_SIZE);
        }
        let count = read.read_buf(&mut buffer).await?;
        if count == 0 {
            return send.send_data(Bytes::new(), true).map_err(h2_to_io);
        }
        total.fetch_add(count as u64, Ordering::Relaxed);
        activity.touch();
        send_all(send, buffer.split().freeze()).await?;
    }
}

/// Sends `chunk` on the stream as flow control allows.
async fn send_all(send: &mut SendStream<Bytes>, mut chunk: Bytes) -> io::Result<()> {
    while !chunk.is_empty() {
        send.reserve_capacity(chunk.len());
        let capacity = match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(capacity) => capacity.map_err(h2_to_io)?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "HBONE stream closed by the peer",
                ));
            }
        };
        if capacity == 0 {
            continue;
        }
        let part = chunk.split_to(capacity.min(chunk.len()));
        send.send_data(part, false).map_err(h2_to_io)?;
    }
    Ok(())
}

/// Forwards one tunnel's incoming data into another tunnel, then ends the other's stream.
async fn h2_to_h2(
    recv: &mut RecvStream,
    send: &mut SendStream<Bytes>,
    total: &AtomicU64,
) -> io::Result<()> {
    while let Some(data) = recv.data().await {
        let data = data.map_err(h2_to_io)?;
        let length = data.len();
        send_all(send, data).await?;
        total.fetch_add(length as u64, Ordering::Relaxed);
        recv.flow_control()
            .release_capacity(length)
            .map_err(h2_to_io)?;
    }
    send.send_data(Bytes::new(), true).map_err(h2_to_io)
}

async fn h2_to_tcp(
    recv: &mut RecvStream,
    write: &mut (impl AsyncWrite + Unpin),
    total: &AtomicU64,
    activity: &Activity,
) -> io::Result<()> {
    while let Some(data) = recv.data().await {
        let data = data.map_err(h2_to_io)?;
        activity.touch();
        write.write_all(&data).await?;
        total.fetch_add(data.len() as u64, Ordering::Relaxed);
        recv.flow_control()
            .release_capacity(data.len())
            .map_err(h2_to_io)?;
    }
    write.shutdown().await
}

fn h2_to_io(error: h2::Error) -> io::Error {
    if error.is_remote()
        && let Some(reason) = error.reason()
    {
        // The other side reset the stream or the whole HTTP/2 connection: for the TCP socket
        // at this end that is what a peer's reset is.
        return io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("HBONE stream reset by the peer ({reason:?})"),
        );
    }
    if error.is_io() {
        error
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 I/O error"))
    } else {
        io::Error::other(error)
    }
}
