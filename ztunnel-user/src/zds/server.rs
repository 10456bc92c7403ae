//! The agent's end of ZDS. Every proxy that connects gets, in order: its hello read (version 1
//! only), one `AddWorkload` per enrolled pod with the pod's netns descriptor, each answer awaited
//! before the next, `SnapshotSent`, and from then on an add or a delete whenever the enrolled set
//! changes. Several proxies may be connected at once (an upgrade's old and new proxy); each is
//! fed the same pods. What each proxy answered is kept in an [`AckBook`], which the CNI plugin's
//! requests wait on.

use std::{
    collections::{BTreeMap, HashMap},
    os::fd::AsFd,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use prost::Message;
use tokio::sync::watch;

use super::{
    ZdsError,
    messages::{
        AddWorkload, DelWorkload, SnapshotSent, Version, WorkloadInfo, WorkloadRequest,
        WorkloadResponse, ZdsHello, workload_request::Payload,
    },
    transport::{SeqPacket, SeqPacketListener},
};
use crate::inpod::netns::Netns;

/// How long a proxy may take to say hello after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a proxy may take to answer one request (opening a pod's listeners is quick; a proxy
/// that does not answer in this time is disconnected and may connect again).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// A pod as the agent announces it.
#[derive(Debug, Clone, PartialEq)]
pub struct AnnouncedPod {
    /// Who the pod is.
    pub info: WorkloadInfo,
    /// Its netns file, opened when the pod is sent.
    pub netns: PathBuf,
    /// The cookie of that netns when it was enrolled: a reused path is another namespace.
    pub netns_cookie: u64,
}

/// Every pod to announce, by uid.
pub type AnnouncedPods = BTreeMap<String, AnnouncedPod>;

/// What each connected proxy answered, by connection and pod uid.
#[derive(Debug, Clone, Default)]
struct Book {
    connections: HashMap<u64, HashMap<String, Result<(), String>>>,
}

/// The answers of the connected proxies, shared between the server and whoever waits for a pod
/// to be served.
#[derive(Debug, Clone)]
pub struct AckBook {
    book: Arc<watch::Sender<Book>>,
}

/// Whether a pod is served.
#[derive(Debug, PartialEq, Eq)]
pub enum Served {
    /// A proxy acked it.
    Yes,
    /// No proxy is connected: the pod stays in the node's fail mode until one connects.
    NoProxy,
}

impl Default for AckBook {
    fn default() -> Self {
        Self {
            book: Arc::new(watch::Sender::new(Book::default())),
        }
    }
}

impl AckBook {
    /// How many proxies are connected.
    pub fn proxies(&self) -> usize {
        self.book.borrow().connections.len()
    }

    /// Waits until a connected proxy acked `uid` (or every one refused it), for at most
    /// `timeout`. A node without a connected proxy answers [`Served::NoProxy`] at once.
    pub async fn wait_served(&self, uid: &str, timeout: Duration) -> Result<Served, String> {
        let mut book = self.book.subscribe();
        let verdict = |book: &Book| -> Option<Result<Served, String>> {
            if book.connections.is_empty() {
                return Some(Ok(Served::NoProxy));
            }
            let answers: Vec<_> = book
                .connections
                .values()
                .map(|acks| acks.get(uid))
                .collect();
            if answers.iter().any(|answer| matches!(answer, Some(Ok(())))) {
                return Some(Ok(Served::Yes));
            }
            if answers.iter().all(Option::is_some) {
                let reasons: Vec<String> = answers
                    .into_iter()
                    .flatten()
                    .filter_map(|answer| answer.clone().err())
                    .collect();
                return Some(Err(format!("the proxy refused it: {}", reasons.join("; "))));
            }
            None
        };
        let waited = tokio::time::timeout(timeout, async {
            loop {
                if let Some(verdict) = verdict(&book.borrow_and_update()) {
                    return verdict;
                }
                if book.changed().await.is_err() {
                    return Err("the agent is stopping".into());
                }
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            Err(format!(
                "no connected proxy answered for {uid} within {timeout:?}"
            ))
        })
    }

    fn record(&self, connection: u64, uid: &str, answer: Option<Result<(), String>>) {
        self.book.send_modify(|book| {
            let acks = book.connections.entry(connection).or_default();
            match answer {
                Some(answer) => {
                    acks.insert(uid.to_owned(), answer);
                }
                None => {
                    acks.remove(uid);
                }
            }
        });
    }

    fn connected(&self, connection: u64) {
        self.book.send_modify(|book| {
            book.connections.entry(connection).or_default();
        });
    }

    fn disconnected(&self, connection: u64) {
        self.book.send_modify(|book| {
            book.connections.remove(&connection);
        });
    }
}

/// Serves ZDS to every proxy that connects.
#[derive(Debug, Clone)]
pub struct ZdsServer {
    pods: watch::Receiver<AnnouncedPods>,
    acks: AckBook,
    next_connection: Arc<AtomicU64>,
}

impl ZdsServer {
    /// A server announcing the pods published on `pods`.
    pub fn new(pods: watch::Receiver<AnnouncedPods>) -> Self {
        Self {
            pods,
            acks: AckBook::default(),
            next_connection: Arc::default(),
        }
    }

    /// The proxies' answers.
    pub fn acks(&self) -> AckBook {
        self.acks.clone()
    }

    /// Accepts proxies on `listener` until the task is dropped; `admit` may refuse one (it logs
    /// why) before anything is sent to it.
    pub async fn serve(
        self,
        listener: SeqPacketListener,
        admit: impl Fn(&SeqPacket) -> Result<(), String> + Send + 'static,
    ) {
        loop {
            let connection = match listener.accept().await {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!(%error, "ZDS accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Err(reason) = admit(&connection) {
                tracing::error!(socket = %listener.path().display(), "proxy refused: {reason}");
                continue;
            }
            let server = self.clone();
            tokio::spawn(async move {
                match server.serve_connection(connection).await {
                    Ok(()) => tracing::info!("a proxy disconnected from the ZDS socket"),
                    Err(error) => tracing::warn!(%error, "ZDS connection with a proxy ended"),
                }
            });
        }
    }

    /// Serves one connected proxy until it disconnects or breaks the protocol.
    pub async fn serve_connection(&self, connection: SeqPacket) -> Result<(), ZdsError> {
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let outcome = self.converse(id, &connection).await;
        self.acks.disconnected(id);
        outcome
    }

    async fn converse(&self, id: u64, connection: &SeqPacket) -> Result<(), ZdsError> {
        let hello = tokio::time::timeout(HELLO_TIMEOUT, connection.recv())
            .await
            .map_err(|_| ZdsError::Timeout("say hello"))??
            .ok_or_else(|| ZdsError::Malformed("the proxy closed before its hello".into()))?;
        let hello = ZdsHello::decode(hello.bytes.as_slice())
            .map_err(|error| ZdsError::Malformed(format!("not a ZdsHello: {error}")))?;
        if hello.version != Version::V1 as i32 {
            return Err(ZdsError::Malformed(format!(
                "the proxy speaks ZDS version {}; this agent speaks version 1",
                hello.version
            )));
        }
        self.acks.connected(id);
        let mut pods = self.pods.clone();
        let mut sent: BTreeMap<String, u64> = BTreeMap::new();
        let snapshot = pods.borrow_and_update().clone();
        tracing::info!(
            pods = snapshot.len(),
            "a proxy connected to the ZDS socket; sending the snapshot"
        );
        for (uid, pod) in &snapshot {
            self.add(id, connection, uid, pod, &mut sent).await?;
        }
        self.request(connection, Payload::SnapshotSent(SnapshotSent {}))
            .await?
            .map_err(|reason| {
                ZdsError::Malformed(format!("the proxy refused SnapshotSent: {reason}"))
            })?;
        loop {
            tokio::select! {
                changed = pods.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let now = pods.borrow_and_update().clone();
                    self.follow(id, connection, &now, &mut sent).await?;
                }
                unexpected = connection.recv() => match unexpected? {
                    None => return Ok(()),
                    Some(_) => tracing::warn!("a proxy sent a message nobody asked for; ignored"),
                },
            }
        }
    }

    /// Sends what changed between `sent` and `now`: deletes first, then adds.
    async fn follow(
        &self,
        id: u64,
        connection: &SeqPacket,
        now: &AnnouncedPods,
        sent: &mut BTreeMap<String, u64>,
    ) -> Result<(), ZdsError> {
        let gone: Vec<String> = sent
            .iter()
            .filter(|(uid, cookie)| now.get(*uid).is_none_or(|pod| pod.netns_cookie != **cookie))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            sent.remove(&uid);
            self.acks.record(id, &uid, None);
            let answer = self
                .request(connection, Payload::Del(DelWorkload { uid: uid.clone() }))
                .await?;
            if let Err(reason) = answer {
                tracing::warn!(%uid, %reason, "the proxy refused a delete");
            }
        }
        for (uid, pod) in now {
            if !sent.contains_key(uid) {
                self.add(id, connection, uid, pod, sent).await?;
            }
        }
        Ok(())
    }

    /// Sends one pod with its netns; a pod whose netns is gone is skipped (the agent's own
    /// bookkeeping removes it).
    async fn add(
        &self,
        id: u64,
        connection: &SeqPacket,
        uid: &str,
        pod: &AnnouncedPod,
        sent: &mut BTreeMap<String, u64>,
    ) -> Result<(), ZdsError> {
        let netns = match Netns::open(&pod.netns) {
            Ok(netns)
                if netns
                    .cookie()
                    .is_ok_and(|cookie| cookie == pod.netns_cookie) =>
            {
                netns
            }
            _ => {
                tracing::info!(%uid, netns = %pod.netns.display(), "pod's netns is gone; not announced");
                return Ok(());
            }
        };
        let request = WorkloadRequest {
            payload: Some(Payload::Add(AddWorkload {
                uid: uid.to_owned(),
                workload_info: Some(pod.info.clone()),
            })),
        };
        connection
            .send(&request.encode_to_vec(), Some(netns.as_fd()))
            .await?;
        let answer = self.answer(connection).await?;
        if let Err(reason) = &answer {
            tracing::warn!(%uid, %reason, "the proxy could not serve a pod");
        }
        sent.insert(uid.to_owned(), pod.netns_cookie);
        self.acks.record(id, uid, Some(answer));
        Ok(())
    }

    async fn request(
        &self,
        connection: &SeqPacket,
        payload: Payload,
    ) -> Result<Result<(), String>, ZdsError> {
        let request = WorkloadRequest {
            payload: Some(payload),
        };
        connection.send(&request.encode_to_vec(), None).await?;
        self.answer(connection).await
    }

    /// The proxy's answer to the request just sent.
    async fn answer(&self, connection: &SeqPacket) -> Result<Result<(), String>, ZdsError> {
        let packet = tokio::time::timeout(ANSWER_TIMEOUT, connection.recv())
            .await
            .map_err(|_| ZdsError::Timeout("answer a request"))??
            .ok_or_else(|| ZdsError::Malformed("the proxy closed before answering".into()))?;
        let response = WorkloadResponse::decode(packet.bytes.as_slice())
            .map_err(|error| ZdsError::Malformed(format!("not a WorkloadResponse: {error}")))?;
        match response.outcome() {
            Ok(()) => Ok(Ok(())),
            Err(Some(reason)) => Ok(Err(reason)),
            Err(None) => Err(ZdsError::Malformed(
                "a WorkloadResponse without an ack".into(),
            )),
        }
    }
}
