//! A small HTTP/1.0 server running inside a pod's netns (on a harness thread that entered it):
//! answers every request with `<greeting> peer=<client address>` and remembers who connected.

use std::{
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd,
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context;

/// A running server; stopped on drop.
pub struct HttpServer {
    address: SocketAddr,
    listener_fd: i32,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Starts listening on `address` inside the netns named `netns`; returns once it listens.
    pub fn start(netns: &str, address: SocketAddr, greeting: &str) -> anyhow::Result<Self> {
        let netns_file = File::open(format!("/var/run/netns/{netns}"))
            .with_context(|| format!("no netns {netns}"))?;
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread_peers = peers.clone();
        let greeting = greeting.to_owned();
        let thread = std::thread::spawn(move || {
            // SAFETY: setns on this dedicated thread only, with an open netns file.
            if unsafe { libc::setns(netns_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = ready_tx.send(Err(std::io::Error::last_os_error()));
                return;
            }
            let listener = match TcpListener::bind(address) {
                Ok(listener) => listener,
                Err(error) => {
                    let _ = ready_tx.send(Err(error));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(listener.as_raw_fd()));
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let Ok(peer) = stream.peer_addr() else {
                    continue;
                };
                thread_peers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(peer);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request);
                let body = format!("{greeting} peer={peer}\n");
                let _ = write!(
                    stream,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        let listener_fd = ready_rx
            .recv()
            .context("server thread ended before listening")?
            .with_context(|| format!("cannot listen on {address} in {netns}"))?;
        println!("server listening on {address} in {netns}");
        Ok(Self {
            address,
            listener_fd,
            peers,
            thread: Some(thread),
        })
    }

    /// Clients that connected so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        // SAFETY: shutting down our own listening socket wakes the blocked accept, which then
        // fails and ends the thread; the fd is closed when the thread drops the listener.
        unsafe { libc::shutdown(self.listener_fd, libc::SHUT_RDWR) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
