//! The proxy's end of ZDS: announce version 1, then act on every request and answer each with an
//! [`Ack`](super::messages::Ack) — empty when done, the reason when not. A message that cannot be
//! decoded is answered with an error and the connection goes on (the next one may be fine); a
//! broken socket ends the connection, and [`run`] connects again while the pods keep being
//! served.

use std::{collections::HashSet, future::Future, os::fd::OwnedFd, path::Path, time::Duration};

use prost::Message;
use tokio::sync::watch;

use super::{
    ZdsError,
    messages::{
        Version, WorkloadInfo, WorkloadRequest, WorkloadResponse, ZdsHello,
        workload_request::Payload,
    },
    transport::SeqPacket,
};

/// What a proxy does with the agent's requests.
pub trait PodSink: Send {
    /// Serve the pod `uid` in the network namespace `netns`. Adding a pod already served in the
    /// same namespace keeps it as it is.
    fn add(
        &mut self,
        uid: String,
        info: Option<WorkloadInfo>,
        netns: OwnedFd,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Keep serving `uid`; an error if it is not served.
    fn keep(&mut self, uid: &str) -> Result<(), String>;
    /// Stop serving `uid`; unknown pods succeed.
    fn delete(&mut self, uid: &str);
    /// Stop serving every pod not in `named` (the snapshot just ended).
    fn retain(&mut self, named: &HashSet<String>);
}

/// How one connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The agent closed it.
    AgentClosed,
    /// This proxy was told to stop.
    Stopped,
}

/// Serves one connection: hello, then requests until the agent closes it, `stop` turns true, or
/// the socket fails.
pub async fn serve_connection(
    connection: &SeqPacket,
    sink: &mut impl PodSink,
    stop: &mut watch::Receiver<bool>,
) -> Result<Ended, ZdsError> {
    let hello = ZdsHello {
        version: Version::V1 as i32,
    };
    connection.send(&hello.encode_to_vec(), None).await?;
    let mut snapshot: Option<HashSet<String>> = Some(HashSet::new());
    loop {
        let packet = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => return Ok(Ended::Stopped),
            packet = connection.recv() => packet,
        };
        let answer = match packet {
            Ok(None) => return Ok(Ended::AgentClosed),
            Ok(Some(packet)) => apply(packet.bytes, packet.fd, sink, &mut snapshot).await,
            Err(ZdsError::Malformed(reason)) => Err(reason),
            Err(error) => return Err(error),
        };
        if let Err(reason) = &answer {
            tracing::warn!(%reason, "ZDS request refused");
        }
        let response = WorkloadResponse::ack(answer.err());
        connection.send(&response.encode_to_vec(), None).await?;
    }
}

/// Decodes and applies one request; `snapshot` collects the uids named until `SnapshotSent`.
async fn apply(
    bytes: Vec<u8>,
    fd: Option<OwnedFd>,
    sink: &mut impl PodSink,
    snapshot: &mut Option<HashSet<String>>,
) -> Result<(), String> {
    let request = WorkloadRequest::decode(bytes.as_slice())
        .map_err(|error| format!("not a WorkloadRequest: {error}"))?;
    let payload = request
        .payload
        .ok_or_else(|| "a WorkloadRequest without a payload".to_owned())?;
    match (payload, fd) {
        (Payload::Add(add), Some(netns)) => {
            if add.uid.is_empty() {
                return Err("AddWorkload without a uid".into());
            }
            if let Some(named) = snapshot {
                named.insert(add.uid.clone());
            }
            tracing::info!(uid = %add.uid, workload = ?add.workload_info, "ZDS: add pod");
            sink.add(add.uid, add.workload_info, netns).await
        }
        (Payload::Add(add), None) => Err(format!(
            "AddWorkload for {} came without the pod's netns descriptor",
            add.uid
        )),
        (_, Some(_)) => Err("only AddWorkload may carry a descriptor".into()),
        (Payload::Keep(keep), None) => {
            if keep.uid.is_empty() {
                return Err("KeepWorkload without a uid".into());
            }
            if let Some(named) = snapshot {
                named.insert(keep.uid.clone());
            }
            sink.keep(&keep.uid)
        }
        (Payload::Del(delete), None) => {
            if delete.uid.is_empty() {
                return Err("DelWorkload without a uid".into());
            }
            if let Some(named) = snapshot {
                named.remove(&delete.uid);
            }
            tracing::info!(uid = %delete.uid, "ZDS: delete pod");
            sink.delete(&delete.uid);
            Ok(())
        }
        (Payload::SnapshotSent(_), None) => {
            let named = snapshot
                .take()
                .ok_or_else(|| "a second SnapshotSent on one connection".to_owned())?;
            tracing::info!(pods = named.len(), "ZDS: snapshot complete");
            sink.retain(&named);
            Ok(())
        }
    }
}

/// The first wait before connecting again; it doubles up to [`MAX_RECONNECT_DELAY`].
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(10);
/// The longest wait between two connection attempts.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// Connects to the agent at `path` and serves it, connecting again (with backoff) whenever the
/// connection is lost, until `stop` turns true. The sink's pods stay served in between.
pub async fn run(path: &Path, sink: &mut impl PodSink, mut stop: watch::Receiver<bool>) {
    let mut delay = FIRST_RECONNECT_DELAY;
    let mut warned = false;
    loop {
        if *stop.borrow() {
            return;
        }
        match SeqPacket::connect(path).await {
            Ok(connection) => {
                tracing::info!(socket = %path.display(), "connected to the capture agent");
                warned = false;
                delay = FIRST_RECONNECT_DELAY;
                match serve_connection(&connection, sink, &mut stop).await {
                    Ok(Ended::Stopped) => return,
                    Ok(Ended::AgentClosed) => tracing::warn!(
                        socket = %path.display(),
                        "the capture agent closed the ZDS connection; serving the pods we have and reconnecting"
                    ),
                    Err(error) => {
                        tracing::warn!(%error, "ZDS connection lost; serving the pods we have and reconnecting")
                    }
                }
            }
            Err(error) if !warned => {
                tracing::warn!(%error, retry_up_to = ?MAX_RECONNECT_DELAY, "capture agent unreachable; retrying");
                warned = true;
            }
            Err(error) => tracing::debug!(%error, "capture agent still unreachable"),
        }
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RECONNECT_DELAY);
    }
}
