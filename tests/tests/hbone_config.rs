//! The proxy reads the current configuration snapshot for every connection: replacing the
//! state (what a config reload does) changes the next tunnel's fate without a restart.

mod hbone_support;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use hbone_support::{init_tracing, within};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use ztunnel::{
    config,
    identity::{CertificateAuthority, CertificateStore},
    proxy::{
        Drain, PodContext, ProxyContext, listeners,
        state_directory::{StateDirectory, workload_info},
    },
    socket::{HostSocketFactory, PodAddressSockets},
    state::{State, StateHandle},
};
use ztunnel_common::constants::HBONE_PORT;

const WORKLOADS: &str = r#"
workloads:
- uid: sleep
  name: sleep
  namespace: default
  serviceAccount: sleep
  workloadIps: ["127.0.61.1"]
  protocol: HBONE
- uid: echo
  name: echo
  namespace: default
  serviceAccount: echo
  workloadIps: ["127.0.61.2"]
  protocol: HBONE
"#;

const DENY_SLEEP: &str = r#"
policies:
- name: deny-sleep
  namespace: default
  scope: Namespace
  action: Deny
  rules:
  - - - principals:
        - !Suffix /sa/sleep
"#;

fn state(text: &str) -> State {
    State::from_config(config::parse(text, "test.yaml").expect("config")).expect("state")
}

async fn attempt(outbound: SocketAddr) -> Vec<u8> {
    let mut client = TcpStream::connect(outbound).await.expect("connect");
    client.write_all(b"hi").await.expect("write");
    client.shutdown().await.expect("shutdown");
    let mut answer = Vec::new();
    let _ = within("tunnel to end", client.read_to_end(&mut answer)).await;
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_state_applies_to_the_next_connection() {
    init_tracing();
    let handle = StateHandle::new(state(WORKLOADS));
    let authority = Arc::new(CertificateAuthority::generate("cluster.local").unwrap());
    let store = Arc::new(
        CertificateStore::with_authority(authority, "cluster.local", Duration::from_secs(3600))
            .unwrap(),
    );
    let (_drain, watch) = Drain::new();
    let metrics = ztunnel::admin::metrics::Metrics::new();
    let observer = Arc::new(ztunnel::proxy::istio_metrics::IstioMetrics::new(
        metrics.clone(),
        handle.clone(),
    ));
    let context = ProxyContext::with_observer(
        Arc::new(StateDirectory::new(handle.clone())),
        store.clone(),
        watch,
        observer,
    );
    let snapshot = handle.snapshot();
    let sleep = workload_info(
        &snapshot
            .workload_by_ip("127.0.61.1".parse().unwrap())
            .unwrap(),
    );
    let echo = workload_info(
        &snapshot
            .workload_by_ip("127.0.61.2".parse().unwrap())
            .unwrap(),
    );
    let client_sockets = Arc::new(PodAddressSockets(sleep.ips[0]));
    let client = PodContext::new(sleep, client_sockets, &store).unwrap();
    let server = PodContext::new(echo, Arc::new(HostSocketFactory), &store).unwrap();
    let hbone = TcpListener::bind(("127.0.61.2", HBONE_PORT)).await.unwrap();
    tokio::spawn(listeners::serve_inbound_hbone(
        context.clone(),
        server,
        hbone,
    ));
    let app = TcpListener::bind("127.0.61.2:0").await.unwrap();
    let app_address = app.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = app.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    let listener = TcpListener::bind("127.0.61.1:0").await.unwrap();
    let outbound = listener.local_addr().unwrap();
    tokio::spawn(listeners::serve_outbound(
        context.clone(),
        client,
        listener,
        Arc::new(listeners::FixedDestination(app_address)),
    ));
    println!("set up: config with sleep 127.0.61.1 and echo 127.0.61.2 (HBONE), app {app_address}");

    let before = attempt(outbound).await;
    handle.replace(state(&format!("{WORKLOADS}{DENY_SLEEP}")));
    let denied = attempt(outbound).await;
    let answered_401 = context.metrics.answers(401);
    handle.replace(state(WORKLOADS));
    let after = attempt(outbound).await;
    println!(
        "observed: before {:?}, with deny-sleep {:?} (401 answers: {answered_401}), after removing it {:?}",
        String::from_utf8_lossy(&before),
        String::from_utf8_lossy(&denied),
        String::from_utf8_lossy(&after)
    );
    let exported = metrics.encode().expect("encode metrics");
    let interesting: Vec<&str> = exported
        .lines()
        .filter(|line| {
            line.starts_with("istio_tcp_connections_opened_total{")
                || line.starts_with("ztunnel_connections_denied_total{")
        })
        .collect();
    println!("observed metrics:\n{}", interesting.join("\n"));
    assert_eq!(before, b"hi");
    let opened_by_source = interesting.iter().any(|line| {
        line.starts_with("istio_tcp_connections_opened_total{")
            && line.contains("reporter=\"source\"")
            && line.contains("source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"")
            && line.contains("destination_principal=\"spiffe://cluster.local/ns/default/sa/echo\"")
            && line.contains("connection_security_policy=\"mutual_tls\"")
    });
    assert!(
        opened_by_source,
        "outbound opens must be exported with Istio labels"
    );
    assert!(
        interesting
            .iter()
            .any(|line| line.starts_with("ztunnel_connections_denied_total{")
                && line.contains("reporter=\"destination\"")),
        "the 401 must be counted as denied"
    );
    assert!(denied.is_empty());
    assert_eq!(answered_401, 1);
    assert_eq!(after, b"hi");
}
