//! ztunnel's side: accepts requests from CNI plugins and answers after acting on them.

use std::{
    future::Future,
    io::{IoSliceMut, Read, Write},
    net::IpAddr,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{fs::PermissionsExt, net::UnixStream},
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use tokio::net::UnixListener;
use tracing::{info, warn};

use super::{
    EnrollmentError,
    protocol::{MAX_FRAME, PodRef, Reply, Request, announced_length, decode, encode},
};

/// How long a plugin may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What ztunnel does with enrollment requests.
pub trait EnrollmentHandler: Send + Sync + 'static {
    /// Enroll the pod whose netns is `netns`; return once its listeners are open.
    fn enroll(
        &self,
        pod: PodRef,
        ips: Vec<IpAddr>,
        netns_path: String,
        netns: OwnedFd,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Unenroll the pod; unknown pods succeed.
    fn unenroll(&self, pod: PodRef) -> impl Future<Output = Result<(), String>> + Send;
    /// Succeed only if the pod is enrolled with `ips` and its listeners are open.
    fn check(
        &self,
        pod: PodRef,
        ips: Vec<IpAddr>,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// The listening enrollment socket.
#[derive(Debug)]
pub struct EnrollmentServer {
    listener: UnixListener,
    path: PathBuf,
}

impl EnrollmentServer {
    /// Binds the socket at `path` (replacing a stale socket file), readable by root only.
    pub fn bind(path: &Path) -> Result<Self, EnrollmentError> {
        let io = |doing| move |source| EnrollmentError::Io { doing, source };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating the run directory"))?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io("removing a stale socket")(error)),
        }
        let listener = UnixListener::bind(path).map_err(io("binding the enrollment socket"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io("restricting the socket's permissions"))?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves requests until the task is dropped.
    pub async fn serve<H: EnrollmentHandler>(self, handler: Arc<H>) {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    warn!(%error, "enrollment socket accept failed");
                    continue;
                }
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                if let Err(error) = serve_one(stream, handler).await {
                    warn!(%error, "enrollment request failed");
                }
            });
        }
    }
}

async fn serve_one<H: EnrollmentHandler>(
    stream: tokio::net::UnixStream,
    handler: Arc<H>,
) -> Result<(), EnrollmentError> {
    let io = |doing| move |source| EnrollmentError::Io { doing, source };
    let stream = stream.into_std().map_err(io("taking the connection"))?;
    stream
        .set_nonblocking(false)
        .map_err(io("taking the connection"))?;
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .map_err(io("setting the request timeout"))?;
    let (stream, request, netns) = tokio::task::spawn_blocking(move || {
        read_request(&stream).map(|(request, netns)| (stream, request, netns))
    })
    .await
    .map_err(|error| EnrollmentError::Malformed(format!("request reader panicked: {error}")))??;

    let outcome = match request {
        Request::Enroll {
            pod,
            ips,
            netns_path,
        } => match netns {
            Some(netns) => {
                info!(pod = %pod.name, namespace = %pod.namespace, ?ips, netns = %netns_path, "enrolling pod");
                handler.enroll(pod, ips, netns_path, netns).await
            }
            None => Err("an enroll request must carry the pod's netns file descriptor".to_owned()),
        },
        Request::Unenroll { pod } => {
            info!(pod = %pod.name, namespace = %pod.namespace, "unenrolling pod");
            handler.unenroll(pod).await
        }
        Request::Check { pod, ips } => handler.check(pod, ips).await,
    };
    let reply = match outcome {
        Ok(()) => Reply::Ok,
        Err(message) => Reply::Error { message },
    };
    let frame = encode(&reply)?;
    tokio::task::spawn_blocking(move || (&stream).write_all(&frame))
        .await
        .map_err(|error| EnrollmentError::Malformed(format!("reply writer panicked: {error}")))?
        .map_err(io("writing the reply"))
}

/// Reads one request frame and the file descriptor that came with its first bytes, if any.
fn read_request(stream: &UnixStream) -> Result<(Request, Option<OwnedFd>), EnrollmentError> {
    let io = |doing| move |source| EnrollmentError::Io { doing, source };
    let mut buffer = vec![0u8; 4 + MAX_FRAME];
    let mut control = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let (received, netns) = {
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let message = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut control),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|errno| EnrollmentError::Io {
            doing: "reading the request",
            source: errno.into(),
        })?;
        let mut netns = None;
        for message in message.cmsgs().map_err(|errno| EnrollmentError::Io {
            doing: "reading the request's control data",
            source: errno.into(),
        })? {
            if let ControlMessageOwned::ScmRights(fds) = message {
                for fd in fds {
                    // SAFETY: the kernel just installed this descriptor in our table for us; we
                    // are its only owner. Extra descriptors are closed when dropped.
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    netns.get_or_insert(owned);
                }
            }
        }
        (message.bytes, netns)
    };
    if received < 4 {
        let mut rest = [0u8; 4];
        (&*stream)
            .read_exact(&mut rest[..4 - received])
            .map_err(io("reading the request"))?;
        buffer[received..4].copy_from_slice(&rest[..4 - received]);
    }
    let prefix = [buffer[0], buffer[1], buffer[2], buffer[3]];
    let total = 4 + announced_length(prefix)?;
    if received < total {
        (&*stream)
            .read_exact(&mut buffer[received.max(4)..total])
            .map_err(io("reading the request"))?;
    }
    Ok((decode(&buffer[..total])?, netns))
}
