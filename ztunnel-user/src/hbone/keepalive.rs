//! Keeping HBONE connections honest: HTTP/2 PINGs with a deadline on both sides, and on the
//! server a bound on how long a connection may carry no stream.
//!
//! A TLS connection costs a file descriptor and buffers for as long as it is open. A peer that
//! died without a FIN (node gone, packets dropped), or a client that completed TLS and then sent
//! nothing but the HTTP/2 preface, would otherwise keep it forever. Istio's ztunnel pings every
//! 10 s and gives up when a PING is not answered within 20 s; the defaults here are the same. A
//! live client that answers PINGs but never opens a stream is the other way to hold a
//! connection: the server closes it (GOAWAY) once it has carried no stream for
//! [`Keepalive::unused_timeout`], which is longer than any well-behaved client keeps an unused
//! pooled connection (ours and Istio's release them after 5 minutes).

use std::time::Duration;

use tokio::sync::watch;

/// Default [`Keepalive::ping_interval`] (Istio's ztunnel: 10 s).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(10);
/// Default [`Keepalive::ping_timeout`] (Istio's ztunnel: 20 s).
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Default [`Keepalive::unused_timeout`]: twice the 5 minutes after which clients (ours and
/// Istio's) release an unused pooled connection, so a well-behaved client always closes first.
pub const DEFAULT_UNUSED_TIMEOUT: Duration = Duration::from_secs(600);

/// PING cadence and deadlines of HBONE connections; one set per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// How long after the connection opened, and after each answered PING, the next is sent.
    pub ping_interval: Duration,
    /// A PING not answered within this is a dead peer: the connection is closed.
    pub ping_timeout: Duration,
    /// Server side: a connection that has carried no stream for this long is closed (GOAWAY).
    pub unused_timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            ping_interval: DEFAULT_PING_INTERVAL,
            ping_timeout: DEFAULT_PING_TIMEOUT,
            unused_timeout: DEFAULT_UNUSED_TIMEOUT,
        }
    }
}

/// Why the keep-alive gave up on a connection.
#[derive(Debug)]
pub enum PingFailure {
    /// A PING was not answered within the timeout.
    Unanswered(Duration),
    /// The PING could not be sent or its answer read (the connection is already gone).
    Connection(h2::Error),
}

/// Pings the peer every `keepalive.ping_interval` and returns when a PING goes unanswered for
/// `keepalive.ping_timeout` or the connection fails. The h2 connection must be polled beside
/// this future (the PING travels when it is).
pub async fn ping_until_unanswered(
    mut ping_pong: h2::PingPong,
    keepalive: Keepalive,
) -> PingFailure {
    loop {
        tokio::time::sleep(keepalive.ping_interval).await;
        match tokio::time::timeout(keepalive.ping_timeout, ping_pong.ping(h2::Ping::opaque())).await
        {
            Ok(Ok(_pong)) => tracing::trace!("HBONE keep-alive PING answered"),
            Ok(Err(error)) => return PingFailure::Connection(error),
            Err(_) => return PingFailure::Unanswered(keepalive.ping_timeout),
        }
    }
}

/// The streams a server connection carries: how many are open, and how many were ever opened
/// (so that a stream that opens and ends between two looks is not missed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct StreamCount {
    open: usize,
    opened: u64,
}

/// Counts a server connection's streams; [`OpenStreams::unused_for`] waits for a quiet spell.
#[derive(Debug)]
pub struct OpenStreams {
    count: watch::Sender<StreamCount>,
}

impl Default for OpenStreams {
    fn default() -> Self {
        Self {
            count: watch::Sender::new(StreamCount::default()),
        }
    }
}

/// One open stream of [`OpenStreams`]; ends when dropped.
#[derive(Debug)]
pub struct StreamGuard {
    count: watch::Sender<StreamCount>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.count.send_modify(|count| count.open -= 1);
    }
}

impl OpenStreams {
    /// A stream opened; it counts as open until the guard is dropped.
    pub fn opened(&self) -> StreamGuard {
        self.count.send_modify(|count| {
            count.open += 1;
            count.opened += 1;
        });
        StreamGuard {
            count: self.count.clone(),
        }
    }

    /// Returns once no stream has been open for `timeout` (counted from the connection's start
    /// or from the end of its last stream).
    pub async fn unused_for(&self, timeout: Duration) {
        let mut changes = self.count.subscribe();
        loop {
            let idle_from = match changes.wait_for(|count| count.open == 0).await {
                Ok(count) => count.opened,
                // The sender lives in `self`: it cannot be gone while we borrow it.
                Err(_) => return,
            };
            let busy_again = changes.wait_for(|count| count.opened != idle_from);
            if tokio::time::timeout(timeout, busy_again).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_unused_only_after_a_quiet_spell_with_no_stream_open() {
        let streams = OpenStreams::default();
        let start = Instant::now();
        let timeout = Duration::from_secs(10);
        let stream = streams.opened();
        let quiet = streams.unused_for(timeout);
        tokio::pin!(quiet);
        // Open for 30 s: never unused while a stream is open.
        tokio::select! {
            () = &mut quiet => panic!("unused while a stream was open"),
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
        drop(stream);
        // A short stream 5 s later restarts the quiet spell, even though it is over by the
        // time anyone looks.
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(streams.opened());
        quiet.await;
        assert_eq!(start.elapsed(), Duration::from_secs(45));
    }
}
