//! Both ends of ZDS against each other over a socket pair, with this process's own netns as
//! every pod's (needs root, as the agent does: reading a netns cookie enters the namespace).

use std::{
    collections::HashSet,
    os::fd::OwnedFd,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use prost::Message;
use tokio::sync::watch;

use super::{
    client::{self, Ended, PodSink},
    messages::{WorkloadInfo, WorkloadResponse, ZdsHello},
    server::{AnnouncedPod, AnnouncedPods, Served, ZdsServer},
    transport::SeqPacket,
};
use crate::inpod::netns::Netns;

/// What a proxy was asked, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Add(String, String),
    Keep(String),
    Delete(String),
    Retain(Vec<String>),
}

#[derive(Clone, Default)]
struct RecordingSink {
    events: Arc<Mutex<Vec<Event>>>,
    refuse: Arc<Mutex<HashSet<String>>>,
}

impl RecordingSink {
    fn events(&self) -> Vec<Event> {
        self.events.lock().expect("events").clone()
    }
    fn push(&self, event: Event) {
        self.events.lock().expect("events").push(event);
    }
}

impl PodSink for RecordingSink {
    async fn add(
        &mut self,
        uid: String,
        info: Option<WorkloadInfo>,
        _netns: OwnedFd,
    ) -> Result<(), String> {
        if self.refuse.lock().expect("refuse").contains(&uid) {
            return Err(format!("cannot open listeners for {uid}"));
        }
        self.push(Event::Add(
            uid,
            info.map(|info| info.name).unwrap_or_default(),
        ));
        Ok(())
    }
    fn keep(&mut self, uid: &str) -> Result<(), String> {
        self.push(Event::Keep(uid.to_owned()));
        Ok(())
    }
    fn delete(&mut self, uid: &str) {
        self.push(Event::Delete(uid.to_owned()));
    }
    fn retain(&mut self, named: &HashSet<String>) {
        let mut named: Vec<String> = named.iter().cloned().collect();
        named.sort();
        self.push(Event::Retain(named));
    }
}

fn pod(name: &str) -> AnnouncedPod {
    let own = PathBuf::from("/proc/self/ns/net");
    let cookie = Netns::open(&own)
        .and_then(|netns| netns.cookie())
        .expect("these tests need root: reading a netns cookie enters the namespace");
    AnnouncedPod {
        info: WorkloadInfo {
            name: name.into(),
            namespace: "default".into(),
            service_account: "sa".into(),
        },
        netns: own,
        netns_cookie: cookie,
    }
}

fn pods(names: &[&str]) -> AnnouncedPods {
    names
        .iter()
        .map(|name| (format!("uid-{name}"), pod(name)))
        .collect()
}

/// Waits until the sink has seen `count` events.
async fn events_after(sink: &RecordingSink, count: usize) -> Vec<Event> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let events = sink.events();
            if events.len() >= count {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("awaited {count} events, saw {:?}", sink.events()))
}

struct Running {
    published: watch::Sender<AnnouncedPods>,
    server: ZdsServer,
    sink: RecordingSink,
    stop: watch::Sender<bool>,
    proxy: tokio::task::JoinHandle<Result<Ended, super::ZdsError>>,
}

fn connect(
    server: &ZdsServer,
    sink: &RecordingSink,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<Result<Ended, super::ZdsError>>,
) {
    let (agent_end, proxy_end) = SeqPacket::pair().expect("socket pair");
    let agent = server.clone();
    tokio::spawn(async move { agent.serve_connection(agent_end).await });
    let (stop, mut stopped) = watch::channel(false);
    let mut proxy_sink = sink.clone();
    let proxy = tokio::spawn(async move {
        client::serve_connection(&proxy_end, &mut proxy_sink, &mut stopped).await
    });
    (stop, proxy)
}

fn start(initial: &[&str]) -> Running {
    let (published, pods_watch) = watch::channel(pods(initial));
    let server = ZdsServer::new(pods_watch);
    let sink = RecordingSink::default();
    let (stop, proxy) = connect(&server, &sink);
    Running {
        published,
        server,
        sink,
        stop,
        proxy,
    }
}

#[tokio::test]
async fn a_proxy_gets_the_snapshot_then_adds_and_deletes() {
    let running = start(&["a", "b"]);
    let events = events_after(&running.sink, 3).await;
    println!("after connecting: {events:?}");
    assert_eq!(
        events,
        [
            Event::Add("uid-a".into(), "a".into()),
            Event::Add("uid-b".into(), "b".into()),
            Event::Retain(vec!["uid-a".into(), "uid-b".into()]),
        ]
    );
    running.published.send_replace(pods(&["b", "c"]));
    let events = events_after(&running.sink, 5).await;
    println!("after publishing b, c: {events:?}");
    assert_eq!(
        events[3..],
        [
            Event::Delete("uid-a".into()),
            Event::Add("uid-c".into(), "c".into())
        ]
    );
    assert_eq!(
        running
            .server
            .acks()
            .wait_served("uid-c", Duration::from_secs(5))
            .await,
        Ok(Served::Yes)
    );
    running.stop.send_replace(true);
    assert_eq!(
        running.proxy.await.expect("join").expect("serve"),
        Ended::Stopped
    );
}

#[tokio::test]
async fn a_reconnecting_proxy_drops_pods_the_new_snapshot_does_not_name() {
    let running = start(&["a", "b"]);
    events_after(&running.sink, 3).await;
    running.stop.send_replace(true);
    running.proxy.await.expect("join").expect("serve");
    // The agent restarts with only b enrolled; the same proxy (same sink) connects again.
    let (_published, pods_watch) = watch::channel(pods(&["b"]));
    let restarted = ZdsServer::new(pods_watch);
    let (_stop, _proxy) = connect(&restarted, &running.sink);
    let events = events_after(&running.sink, 5).await;
    println!("after reconnecting: {events:?}");
    assert_eq!(
        events[3..],
        [
            Event::Add("uid-b".into(), "b".into()),
            Event::Retain(vec!["uid-b".into()])
        ]
    );
}

#[tokio::test]
async fn a_pod_the_proxy_cannot_serve_is_reported_to_whoever_waits_for_it() {
    let (published, pods_watch) = watch::channel(pods(&[]));
    let server = ZdsServer::new(pods_watch);
    assert_eq!(
        server
            .acks()
            .wait_served("uid-x", Duration::from_secs(1))
            .await,
        Ok(Served::NoProxy),
        "no proxy connected must not block the CNI plugin"
    );
    let sink = RecordingSink::default();
    sink.refuse.lock().expect("refuse").insert("uid-x".into());
    let (_stop, _proxy) = connect(&server, &sink);
    events_after(&sink, 1).await;
    published.send_replace(pods(&["x"]));
    let answer = server
        .acks()
        .wait_served("uid-x", Duration::from_secs(5))
        .await;
    println!("waiting for a refused pod: {answer:?}");
    let reason = answer.expect_err("a refused pod reported as served");
    assert!(
        reason.contains("cannot open listeners for uid-x"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_malformed_request_gets_an_error_ack_and_the_connection_goes_on() {
    let (agent, proxy) = SeqPacket::pair().expect("socket pair");
    let sink = RecordingSink::default();
    let (_stop, mut stopped) = watch::channel(false);
    let mut proxy_sink = sink.clone();
    let _proxy = tokio::spawn(async move {
        client::serve_connection(&proxy, &mut proxy_sink, &mut stopped).await
    });
    let hello = agent.recv().await.expect("recv").expect("hello");
    assert_eq!(
        ZdsHello::decode(hello.bytes.as_slice())
            .expect("hello decodes")
            .version,
        1
    );
    // (An empty message cannot be told from the end of the connection on a seqpacket socket.)
    for garbage in [
        &b"\xff\xff\xff"[..],
        &b"\x0a\x02\x0a\x00"[..],
        &b"\x12\x00"[..],
    ] {
        agent.send(garbage, None).await.expect("send");
        let answer = agent.recv().await.expect("recv").expect("an answer");
        let answer = WorkloadResponse::decode(answer.bytes.as_slice()).expect("a response");
        println!("{garbage:?} answered {answer:?}");
        assert!(
            matches!(answer.outcome(), Err(Some(_))),
            "{garbage:?} was not refused"
        );
    }
    assert!(
        sink.events().is_empty(),
        "a malformed request reached the proxy: {:?}",
        sink.events()
    );
}

#[tokio::test]
async fn an_agent_refuses_a_proxy_of_another_version() {
    let (agent, proxy) = SeqPacket::pair().expect("socket pair");
    let (_published, pods_watch) = watch::channel(pods(&["a"]));
    let server = ZdsServer::new(pods_watch);
    let serving = tokio::spawn(async move { server.serve_connection(agent).await });
    proxy
        .send(&ZdsHello { version: 7 }.encode_to_vec(), None)
        .await
        .expect("send");
    let error = serving
        .await
        .expect("join")
        .expect_err("version 7 accepted");
    println!("agent said: {error}");
    assert!(error.to_string().contains("version 7"), "{error}");
}
