//! ZDS's transport: a `SOCK_SEQPACKET` Unix socket, one protobuf message per packet, a pod's
//! netns as a file descriptor in the same packet (`SCM_RIGHTS`). tokio has no seqpacket type, so
//! this wraps the descriptor in [`AsyncFd`] and uses `nix`'s `sendmsg`/`recvmsg`.

use std::{
    io::{IoSlice, IoSliceMut},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::fs::PermissionsExt,
    },
    path::{Path, PathBuf},
};

use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr, accept4, bind, connect, listen, recvmsg, sendmsg, socket, socketpair,
    sockopt::PeerCredentials,
};
use tokio::io::{Interest, unix::AsyncFd};

use super::ZdsError;

/// The largest message either side accepts. Istio's ztunnel reads into 1 KiB; a pod's uid and
/// names fit many times over.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// One received packet.
#[derive(Debug)]
pub struct Packet {
    /// The message bytes.
    pub bytes: Vec<u8>,
    /// The file descriptor that came with it, if any.
    pub fd: Option<OwnedFd>,
}

/// A connected `SOCK_SEQPACKET` Unix socket.
#[derive(Debug)]
pub struct SeqPacket {
    socket: AsyncFd<OwnedFd>,
}

fn flags() -> SockFlag {
    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC
}

/// Hands `fd` to the runtime's reactor.
fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the OwnedFd, which keeps the descriptor open and unchanged for as
    // long as it is registered.
    unsafe { AsyncFd::register(fd) }.map_err(|error| std::io::Error::other(error.to_string()))
}

impl SeqPacket {
    fn wrap(fd: OwnedFd) -> Result<Self, ZdsError> {
        register(fd)
            .map(|socket| Self { socket })
            .map_err(|source| ZdsError::io("register the ZDS socket with the runtime", source))
    }

    /// Connects to the agent's socket at `path`.
    pub async fn connect(path: &Path) -> Result<Self, ZdsError> {
        let connect_error = |source: std::io::Error| ZdsError::Connect {
            path: path.to_owned(),
            source,
        };
        let fd = socket(AddressFamily::Unix, SockType::SeqPacket, flags(), None)
            .map_err(|errno| connect_error(errno.into()))?;
        let address = UnixAddr::new(path).map_err(|errno| connect_error(errno.into()))?;
        // A Unix socket connects at once or fails (a full backlog is EAGAIN: retried by caller).
        connect(fd.as_raw_fd(), &address).map_err(|errno| connect_error(errno.into()))?;
        Self::wrap(fd)
    }

    /// Two connected ends, for an agent and a proxy in one process (`ztunnel daemon`).
    pub fn pair() -> Result<(Self, Self), ZdsError> {
        let (one, other) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, flags())
            .map_err(|errno| ZdsError::io("create a ZDS socket pair", errno.into()))?;
        Ok((Self::wrap(one)?, Self::wrap(other)?))
    }

    /// The process id of the peer, as the kernel recorded it at connect time.
    pub fn peer_pid(&self) -> Result<i32, ZdsError> {
        nix::sys::socket::getsockopt(self.socket.get_ref(), PeerCredentials)
            .map(|credentials| credentials.pid())
            .map_err(|errno| ZdsError::io("read the ZDS peer's credentials", errno.into()))
    }

    /// Sends one message, with `fd` attached if given.
    pub async fn send(&self, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> Result<(), ZdsError> {
        let raw = self.socket.get_ref().as_raw_fd();
        let fds: Vec<RawFd> = fd.iter().map(AsRawFd::as_raw_fd).collect();
        self.socket
            .async_io(Interest::WRITABLE, |_| {
                let iov = [IoSlice::new(bytes)];
                let rights = [ControlMessage::ScmRights(&fds)];
                let control: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
                sendmsg::<()>(raw, &iov, control, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(std::io::Error::from)
            })
            .await
            .map(|_| ())
            .map_err(|source| ZdsError::io("send a ZDS message", source))
    }

    /// Receives one message; `None` when the peer closed the connection.
    pub async fn recv(&self) -> Result<Option<Packet>, ZdsError> {
        let raw = self.socket.get_ref().as_raw_fd();
        let mut buffer = vec![0u8; MAX_MESSAGE];
        let (length, flags, fds) = self
            .socket
            .async_io(Interest::READABLE, |_| {
                let mut iov = [IoSliceMut::new(&mut buffer)];
                let mut space = nix::cmsg_space!([RawFd; 1]);
                let message =
                    recvmsg::<()>(raw, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
                        .map_err(std::io::Error::from)?;
                let mut fds = Vec::new();
                for control in message.cmsgs().map_err(std::io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(received) = control {
                        // SAFETY: the kernel installed these descriptors for this process just
                        // now; nothing else owns them.
                        fds.extend(
                            received
                                .into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                Ok((message.bytes, message.flags, fds))
            })
            .await
            .map_err(|source| ZdsError::io("receive a ZDS message", source))?;
        // Every check after the descriptors are owned, so a refused message leaks none.
        if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
            return Err(ZdsError::Malformed(format!(
                "a message was truncated (more than {MAX_MESSAGE} bytes or more than one descriptor)"
            )));
        }
        if length == 0 && fds.is_empty() {
            return Ok(None);
        }
        if fds.len() > 1 {
            return Err(ZdsError::Malformed(format!(
                "a message carried {} file descriptors; at most one (a netns) is expected",
                fds.len()
            )));
        }
        buffer.truncate(length);
        Ok(Some(Packet {
            bytes: buffer,
            fd: fds.into_iter().next(),
        }))
    }
}

impl AsFd for SeqPacket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.get_ref().as_fd()
    }
}

/// The agent's listening socket.
#[derive(Debug)]
pub struct SeqPacketListener {
    socket: AsyncFd<OwnedFd>,
    path: PathBuf,
}

impl SeqPacketListener {
    /// Binds `path` (replacing a stale socket file), readable and writable by root only.
    pub fn bind(path: &Path) -> Result<Self, ZdsError> {
        let bind_error = |source: std::io::Error| ZdsError::Bind {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(bind_error)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(bind_error(error)),
        }
        let fd = socket(AddressFamily::Unix, SockType::SeqPacket, flags(), None)
            .map_err(|errno| bind_error(errno.into()))?;
        let address = UnixAddr::new(path).map_err(|errno| bind_error(errno.into()))?;
        bind(fd.as_raw_fd(), &address).map_err(|errno| bind_error(errno.into()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_error)?;
        listen(&fd, Backlog::new(16).unwrap_or(Backlog::MAXCONN))
            .map_err(|errno| bind_error(errno.into()))?;
        let socket = register(fd).map_err(bind_error)?;
        Ok(Self {
            socket,
            path: path.to_owned(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next proxy that connects.
    pub async fn accept(&self) -> Result<SeqPacket, ZdsError> {
        let fd = self
            .socket
            .async_io(Interest::READABLE, |socket| {
                accept4(socket, flags()).map_err(std::io::Error::from)
            })
            .await
            .map_err(|source| ZdsError::io("accept a proxy on the ZDS socket", source))?;
        SeqPacket::wrap(fd)
    }
}

impl Drop for SeqPacketListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_message_and_its_descriptor_arrive_together() {
        let (agent, proxy) = SeqPacket::pair().expect("socket pair");
        let file = tempfile::tempfile().expect("temp file");
        agent
            .send(b"hello", Some(file.as_fd()))
            .await
            .expect("send");
        let packet = proxy.recv().await.expect("recv").expect("not closed");
        assert_eq!(packet.bytes, b"hello");
        assert!(packet.fd.is_some(), "descriptor lost");
        agent.send(b"x", None).await.expect("send");
        let packet = proxy.recv().await.expect("recv").expect("not closed");
        assert!(packet.fd.is_none());
        drop(agent);
        assert!(proxy.recv().await.expect("recv").is_none(), "EOF not seen");
    }

    #[tokio::test]
    async fn two_descriptors_in_one_message_are_refused_and_closed() {
        let (agent, proxy) = SeqPacket::pair().expect("socket pair");
        let one = tempfile::tempfile().expect("temp file");
        let two = tempfile::tempfile().expect("temp file");
        let fds = [one.as_raw_fd(), two.as_raw_fd()];
        let raw = agent.as_fd().as_raw_fd();
        sendmsg::<()>(
            raw,
            &[IoSlice::new(b"x")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .expect("sendmsg");
        let error = proxy.recv().await.expect_err("two descriptors accepted");
        assert!(error.to_string().contains("descriptor"), "{error}");
    }

    #[tokio::test]
    async fn an_oversized_message_is_refused() {
        let (agent, proxy) = SeqPacket::pair().expect("socket pair");
        agent
            .send(&vec![0u8; MAX_MESSAGE + 1], None)
            .await
            .expect("send");
        let error = proxy.recv().await.expect_err("oversized accepted");
        assert!(error.to_string().contains("truncated"), "{error}");
    }
}
