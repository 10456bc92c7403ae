use std::time::Instant;

use super::*;
use crate::{config::parse, state::State};

const MESH: &str = include_str!("../../config/testdata/istio-local.yaml");
const ECHO_2: &str = "- uid: cluster1//v1/Pod/ns2/echo-2";
const AFTER_ECHO_2: &str = "- uid: cluster1//v1/Pod/ns2/waypoint-1";

fn state(text: &str) -> State {
    State::from_config(parse(text, "mesh.yaml").unwrap()).unwrap()
}

/// The mesh without the workload `echo-2` (198.18.2.11).
fn mesh_without_echo_2() -> String {
    let start = MESH.find(ECHO_2).unwrap();
    let end = MESH.find(AFTER_ECHO_2).unwrap();
    format!("{}{}", &MESH[..start], &MESH[end..])
}

/// The labels and value of each series of `name` in the exposition `text`.
fn series(text: &str, name: &str) -> Vec<(String, String)> {
    let prefix = format!("{name}{{");
    text.lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter_map(|rest| rest.rsplit_once("} "))
        .map(|(labels, value)| (labels.to_owned(), value.to_owned()))
        .collect()
}

#[test]
fn a_connection_closes_under_the_labels_it_opened_with_though_its_workload_left_meanwhile() {
    let handle = StateHandle::new(state(MESH));
    let metrics = Metrics::new();
    let observer = IstioMetrics::new(metrics.clone(), handle.clone());
    let record = ConnectionRecord {
        direction: Direction::Outbound,
        source: "198.18.1.10:40000".parse().unwrap(),
        destination: "198.18.2.11:8080".parse().unwrap(),
        source_identity: None,
        destination_identity: None,
        mutual_tls: true,
        via: None,
        started: Instant::now(),
        peer_baggage: None,
    };

    let open = observer.opened(&record);
    handle.replace(state(&mesh_without_echo_2()));
    assert!(
        handle
            .snapshot()
            .workload_by_ip(record.destination.ip())
            .is_none()
    );
    open.closed(Transferred {
        sent: 7,
        received: 5,
    });

    let text = metrics.encode().unwrap();
    let opened = series(&text, "istio_tcp_connections_opened_total");
    let closed = series(&text, "istio_tcp_connections_closed_total");
    let received = series(&text, "istio_tcp_received_bytes_total");
    let sent = series(&text, "istio_tcp_sent_bytes_total");
    assert_eq!(opened.len(), 1, "{text}");
    assert!(
        opened[0].0.contains("destination_workload=\"echo-2\""),
        "{text}"
    );
    for metric in [&closed, &received, &sent] {
        assert_eq!(metric.len(), 1, "{text}");
        assert_eq!(metric[0].0, opened[0].0, "{text}");
    }
    assert_eq!(closed[0].1, "1");
    // Istio's convention: received is the request direction, what the client sent.
    assert_eq!(received[0].1, "7");
    assert_eq!(sent[0].1, "5");
}

#[test]
fn peers_this_node_cannot_look_up_are_labelled_from_their_baggage() {
    let metrics = Metrics::new();
    let observer = IstioMetrics::new(metrics.clone(), StateHandle::new(state(MESH)));
    let baggage = crate::hbone::baggage::Baggage::parse([
        "k8s.cluster.name=remote,k8s.namespace.name=far,k8s.deployment.name=api,service.name=api-app,service.version=v3",
    ]);
    let peer = crate::identity::SpiffeId::new("cluster.local", "far", "api");
    // Outbound to an address this node does not know: the 200's baggage names the destination.
    let outbound = || ConnectionRecord {
        direction: Direction::Outbound,
        source: "198.18.1.10:40000".parse().unwrap(),
        destination: "198.18.99.1:8080".parse().unwrap(),
        source_identity: None,
        destination_identity: Some(peer.clone()),
        mutual_tls: true,
        via: None,
        started: Instant::now(),
        peer_baggage: Some(Box::new(baggage.clone())),
    };
    // Inbound from an address this node does not know: the CONNECT's baggage names the source.
    let inbound = ConnectionRecord {
        direction: Direction::Inbound,
        source: "198.18.99.1:40000".parse().unwrap(),
        destination: "198.18.2.11:8080".parse().unwrap(),
        source_identity: Some(peer.clone()),
        destination_identity: None,
        ..outbound()
    };
    drop(observer.opened(&inbound));
    drop(observer.opened(&outbound()));

    let text = metrics.encode().unwrap();
    let opened = series(&text, "istio_tcp_connections_opened_total");
    let by_reporter = |reporter: &str| {
        opened
            .iter()
            .find(|(labels, _)| labels.contains(&format!("reporter=\"{reporter}\"")))
            .map(|(labels, _)| labels.clone())
            .unwrap_or_default()
    };
    let (source_side, destination_side) = (by_reporter("source"), by_reporter("destination"));
    println!("source reporter: {source_side}\ndestination reporter: {destination_side}");
    for expected in [
        "destination_workload=\"api\"",
        "destination_canonical_service=\"api-app\"",
        "destination_canonical_revision=\"v3\"",
        "destination_workload_namespace=\"far\"",
        "destination_cluster=\"remote\"",
        "destination_principal=\"spiffe://cluster.local/ns/far/sa/api\"",
    ] {
        assert!(
            source_side.contains(expected),
            "{expected} in {source_side}"
        );
    }
    for expected in [
        "source_workload=\"api\"",
        "source_canonical_service=\"api-app\"",
        "source_workload_namespace=\"far\"",
        "source_cluster=\"remote\"",
    ] {
        assert!(
            destination_side.contains(expected),
            "{expected} in {destination_side}"
        );
    }
}
