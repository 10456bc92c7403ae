//! A new mesh state reaches open connections: a DENY that arrives while a tunnel is open
//! closes that tunnel (counted and exported), and refuses the next one.

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
- {uid: sleep, name: sleep, namespace: default, serviceAccount: sleep, workloadIps: ["127.0.92.1"], protocol: HBONE}
- {uid: echo, name: echo, namespace: default, serviceAccount: echo, workloadIps: ["127.0.92.2"], protocol: HBONE}
"#;

const DENY_SLEEP: &str = r#"
policies:
- name: deny-sleep
  namespace: default
  scope: Namespace
  action: Deny
  rules:
  - - - principals: [!Exact cluster.local/ns/default/sa/sleep]
"#;

fn state(text: &str) -> State {
    State::from_config(config::parse(text, "test.yaml").expect("config")).expect("state")
}

/// Writes `message` and reads the echo of it.
async fn exchange(client: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    client.write_all(message).await.expect("write");
    let mut answer = vec![0u8; message.len()];
    within("the echo", client.read_exact(&mut answer))
        .await
        .expect("read echo");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_applied_mid_connection_closes_it_and_refuses_the_next() {
    init_tracing();
    let handle = StateHandle::new(state(WORKLOADS));
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
    let context = ProxyContext::with_observer(
        Arc::new(StateDirectory::new(handle.clone())),
        store.clone(),
        watch,
        observer,
    );
    let _policy_watch = context.close_refused_on_change(handle.changes());
    let snapshot = handle.snapshot();
    let workload = |ip: &str| {
        workload_info(
            &snapshot
                .workload_by_ip(ip.parse().expect("ip"))
                .expect("workload"),
        )
    };
    // The client's tunnels leave from its own address, as from a real pod's netns.
    let client_ip = "127.0.92.1".parse().expect("ip");
    let client = PodContext::new(
        workload("127.0.92.1"),
        Arc::new(PodAddressSockets(client_ip)),
        &store,
    )
    .expect("client pod");
    let server = PodContext::new(workload("127.0.92.2"), Arc::new(HostSocketFactory), &store)
        .expect("server pod");
    let hbone = TcpListener::bind(("127.0.92.2", HBONE_PORT))
        .await
        .expect("bind HBONE");
    tokio::spawn(listeners::serve_inbound_hbone(
        context.clone(),
        server,
        hbone,
    ));
    let app = TcpListener::bind("127.0.92.2:0").await.expect("bind app");
    let app_address = app.local_addr().expect("app address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = app.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    let listener = TcpListener::bind("127.0.92.1:0")
        .await
        .expect("bind outbound");
    let outbound: SocketAddr = listener.local_addr().expect("outbound address");
    tokio::spawn(listeners::serve_outbound(
        context.clone(),
        client,
        listener,
        Arc::new(listeners::FixedDestination(app_address)),
    ));
    println!("set up: sleep 127.0.92.1 -> echo 127.0.92.2 (HBONE), app {app_address}");

    let mut open = TcpStream::connect(outbound).await.expect("connect");
    let before = exchange(&mut open, b"before").await;
    let tracked_before = context.connections.len();
    handle.replace(state(&format!("{WORKLOADS}{DENY_SLEEP}")));
    let mut rest = Vec::new();
    let ended = within(
        "the open connection to be closed after the DENY",
        open.read_to_end(&mut rest),
    )
    .await;
    let mut next = TcpStream::connect(outbound).await.expect("connect again");
    let _ = next.write_all(b"after").await;
    let mut refused = Vec::new();
    let _ = within("the next connection to end", next.read_to_end(&mut refused)).await;
    let closures = context
        .metrics
        .policy_closures
        .load(std::sync::atomic::Ordering::Relaxed);
    let exported = metrics.encode().expect("encode metrics");
    let exported_line = exported
        .lines()
        .find(|line| line.starts_with("ztunnel_connections_closed_by_policy_total{"))
        .unwrap_or("(none)")
        .to_owned();
    println!(
        "observed: echo before {:?}; tracked inbound connections {tracked_before}; after the DENY the open \
         connection ended with {ended:?} after {} more bytes; the next got {:?}; closures {closures}; exported {exported_line}",
        String::from_utf8_lossy(&before),
        rest.len(),
        String::from_utf8_lossy(&refused),
    );
    assert_eq!(before, b"before");
    assert_eq!(
        tracked_before, 1,
        "the open tunnel is tracked at the destination"
    );
    assert!(
        rest.is_empty(),
        "nothing more arrived on the closed connection"
    );
    assert!(refused.is_empty(), "the next connection was refused");
    assert_eq!(closures, 1);
    assert_eq!(
        exported_line,
        "ztunnel_connections_closed_by_policy_total{reporter=\"destination\"} 1"
    );
}
