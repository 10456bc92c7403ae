//! The plugin's side: one blocking request per connection.

use std::{
    io::{IoSlice, Read},
    os::{
        fd::{AsRawFd, BorrowedFd},
        unix::net::UnixStream,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

use super::{
    EnrollmentError,
    protocol::{Reply, Request, announced_length, decode, encode},
};

/// Talks to the node's ztunnel over its enrollment socket.
#[derive(Debug, Clone)]
pub struct EnrollmentClient {
    path: PathBuf,
    timeout: Duration,
}

impl EnrollmentClient {
    /// A client for the socket at `path`; each request waits at most `timeout` for the answer.
    pub fn new(path: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            path: path.into(),
            timeout,
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `request` (with `netns` attached for enrollments) and waits for ztunnel's reply.
    pub fn send(
        &self,
        request: &Request,
        netns: Option<BorrowedFd<'_>>,
    ) -> Result<(), EnrollmentError> {
        let mut stream =
            UnixStream::connect(&self.path).map_err(|source| EnrollmentError::Connect {
                path: self.path.clone(),
                source,
            })?;
        let io = |doing| move |source| EnrollmentError::Io { doing, source };
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(io("setting the reply timeout"))?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(io("setting the send timeout"))?;

        let frame = encode(request)?;
        let fds = netns.map(|fd| [fd.as_raw_fd()]);
        let control: Vec<ControlMessage<'_>> = fds
            .as_ref()
            .map(|fds| ControlMessage::ScmRights(fds))
            .into_iter()
            .collect();
        let sent = sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(&frame)],
            &control,
            MsgFlags::empty(),
            None,
        )
        .map_err(|errno| EnrollmentError::Io {
            doing: "sending the request",
            source: errno.into(),
        })?;
        if sent != frame.len() {
            // The descriptor went with the first bytes; the rest is plain data.
            std::io::Write::write_all(&mut stream, &frame[sent..])
                .map_err(io("sending the request"))?;
        }

        let mut prefix = [0u8; 4];
        stream
            .read_exact(&mut prefix)
            .map_err(io("reading the reply"))?;
        let mut frame = prefix.to_vec();
        frame.resize(4 + announced_length(prefix)?, 0);
        stream
            .read_exact(&mut frame[4..])
            .map_err(io("reading the reply"))?;
        match decode::<Reply>(&frame)? {
            Reply::Ok => Ok(()),
            Reply::Error { message } => Err(EnrollmentError::Refused(message)),
        }
    }
}
