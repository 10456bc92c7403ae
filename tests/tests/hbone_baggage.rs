//! The `baggage` header on HBONE, as Istio's ztunnel sends it: the `CONNECT` carries the
//! source workload's, the `200` the destination workload's, and the destination labels the
//! metrics of a source it cannot look up from the baggage it received.

mod hbone_support;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use hbone_support::{init_tracing, wait_until, within};
use tokio::net::TcpListener;
use ztunnel::{
    config,
    hbone::{TunnelRequest, baggage::Baggage},
    identity::{CertificateAuthority, CertificateStore},
    proxy::{
        Directory, Drain, PodContext, ProxyContext, listeners,
        state_directory::{StateDirectory, workload_info},
    },
    socket::{HostSocketFactory, PodAddressSockets},
    state::{State, StateHandle},
};
use ztunnel_common::constants::HBONE_PORT;

const WORKLOADS: &str = r#"
workloads:
- uid: sleep
  name: sleep-5d8f
  namespace: default
  serviceAccount: sleep
  workloadIps: ["127.0.96.1"]
  protocol: HBONE
  workloadName: sleep
  workloadType: deployment
  canonicalName: sleep-app
  canonicalRevision: v1
  clusterId: cluster-a
  locality: {region: region-1, zone: zone-a, subzone: ""}
- uid: echo
  name: echo-7c9a
  namespace: default
  serviceAccount: echo
  workloadIps: ["127.0.96.2"]
  protocol: HBONE
  workloadName: echo
  canonicalName: echo-app
  canonicalRevision: v2
  clusterId: cluster-a
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_200_carry_each_sides_baggage_and_metrics_use_the_sources() {
    init_tracing();
    let state =
        State::from_config(config::parse(WORKLOADS, "test.yaml").expect("config")).expect("state");
    let handle = StateHandle::new(state);
    let authority = Arc::new(CertificateAuthority::generate("cluster.local").expect("root"));
    let store = Arc::new(
        CertificateStore::with_authority(authority, "cluster.local", Duration::from_secs(3600))
            .expect("store"),
    );
    let (_drain, watch) = Drain::new();
    let metrics = ztunnel::admin::metrics::Metrics::new();
    let observer = Arc::new(ztunnel::proxy::istio_metrics::IstioMetrics::new(
        metrics.clone(),
        handle.clone(),
    ));
    let directory = Arc::new(StateDirectory::new(handle.clone()));
    let context = ProxyContext::with_observer(directory.clone(), store.clone(), watch, observer);
    let snapshot = handle.snapshot();
    let echo = workload_info(
        &snapshot
            .workload_by_ip("127.0.96.2".parse().expect("ip"))
            .expect("echo"),
    );
    let sleep_identity = snapshot
        .workload_by_ip("127.0.96.1".parse().expect("ip"))
        .expect("sleep")
        .identity();
    let server = PodContext::new(echo.clone(), Arc::new(HostSocketFactory), &store).expect("pod");
    let hbone = TcpListener::bind(("127.0.96.2", HBONE_PORT))
        .await
        .expect("bind HBONE");
    tokio::spawn(listeners::serve_inbound_hbone(
        context.clone(),
        server,
        hbone,
    ));
    let app = TcpListener::bind("127.0.96.2:0").await.expect("bind app");
    let app_address = app.local_addr().expect("app address");
    tokio::spawn(async move { while app.accept().await.is_ok() {} });

    // The source's baggage, as the outbound side sends it; the tunnel claims a source address
    // the destination does not know (as if it came through a gateway).
    let sent = directory
        .baggage("127.0.96.1".parse().expect("ip"))
        .expect("sleep has baggage");
    let unknown_source: SocketAddr = "127.0.96.9:4000".parse().expect("address");
    let tunnel = within(
        "a tunnel to echo",
        context.pool.connect(TunnelRequest {
            source: &sleep_identity,
            expected: std::slice::from_ref(&echo.identity),
            hbone_address: SocketAddr::new(echo.ips[0], HBONE_PORT),
            authority: app_address,
            forwarded_for: unknown_source,
            baggage: Some(&sent),
            // The tunnel leaves from the unknown source's own address: a destination believes
            // `forwarded` only from a waypoint.
            sockets: &PodAddressSockets(unknown_source.ip()),
        }),
    )
    .await
    .expect("tunnel");
    let answered = tunnel.peer_baggage().clone();
    // The destination counts the connection just after it answers 200.
    let destination_opened = || {
        metrics
            .encode()
            .expect("metrics")
            .lines()
            .filter(|line| {
                line.starts_with("istio_tcp_connections_opened_total{")
                    && line.contains("reporter=\"destination\"")
            })
            .map(str::to_owned)
            .collect::<Vec<String>>()
    };
    wait_until("the destination to count the connection", || {
        !destination_opened().is_empty()
    })
    .await;
    let opened = destination_opened();
    println!(
        "set up: sleep (127.0.96.1) tunnels to echo (127.0.96.2) claiming source {unknown_source}"
    );
    println!(
        "observed: sent baggage {sent:?}; 200 answered {answered:?}; destination metrics {opened:#?}"
    );

    assert_eq!(
        sent,
        "k8s.cluster.name=cluster-a,k8s.namespace.name=default,k8s.deployment.name=sleep,\
         service.name=sleep-app,service.version=v1,cloud.region=region-1,cloud.availability_zone=zone-a"
    );
    assert_eq!(
        answered,
        Baggage {
            cluster_id: Some("cluster-a".into()),
            namespace: Some("default".into()),
            workload_name: Some("echo".into()),
            service_name: Some("echo-app".into()),
            revision: Some("v2".into()),
            region: None,
            zone: None,
        }
    );
    assert_eq!(opened.len(), 1, "one inbound connection opened");
    for label in [
        "source_workload=\"sleep\"",
        "source_canonical_service=\"sleep-app\"",
        "source_canonical_revision=\"v1\"",
        "source_workload_namespace=\"default\"",
        "source_cluster=\"cluster-a\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"",
    ] {
        assert!(
            opened[0].contains(label),
            "{label} missing from {}",
            opened[0]
        );
    }
}
