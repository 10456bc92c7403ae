//! A policy change reaches connections held by a waypoint: with a tunnel open from sleep
//! through echo's waypoint, a DENY of sleep closes it at the waypoint (which enforces echo's
//! policy for the client's identity), counted there.

mod hbone_support;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use hbone_support::{init_tracing, within};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsAcceptor;
use ztunnel::{
    config,
    identity::{CertificateAuthority, CertificateStore, SpiffeId, tls},
    proxy::{
        Drain, PodContext, ProxyContext, listeners,
        state_directory::{StateDirectory, workload_info},
    },
    socket::{HostSocketFactory, PodAddressSockets},
    state::{State, StateHandle},
    waypoint::WaypointHandler,
};
use ztunnel_common::constants::HBONE_PORT;

const MESH: &str = r#"
workloads:
- {uid: sleep, name: sleep, namespace: default, serviceAccount: sleep, workloadIps: ["127.0.98.1"], protocol: HBONE}
- {uid: echo, name: echo, namespace: default, serviceAccount: echo, workloadIps: ["127.0.98.2"], protocol: HBONE,
   waypoint: {destination: "default/waypoint.default.svc.cluster.local", hboneMtlsPort: 15008}}
- {uid: wp, name: waypoint-1, namespace: default, serviceAccount: waypoint, workloadIps: ["127.0.98.3"], protocol: TCP,
   services: {"default/waypoint.default.svc.cluster.local": {15008: 15008}}}
services:
- {name: waypoint, namespace: default, hostname: waypoint.default.svc.cluster.local, ports: {15008: 15008}}
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

/// A proxy context over `handle` that closes what a new state refuses; keep the drain and the
/// watcher for the test's duration.
fn context(
    handle: &StateHandle,
    store: &Arc<CertificateStore>,
) -> (Arc<ProxyContext>, Drain, tokio::task::JoinHandle<()>) {
    let (drain, watch) = Drain::new();
    let context = ProxyContext::new(
        Arc::new(StateDirectory::new(handle.clone())),
        store.clone(),
        watch,
    );
    let watcher = context.close_refused_on_change(handle.changes());
    (context, drain, watcher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_closes_a_connection_held_by_the_waypoint() {
    init_tracing();
    let handle = StateHandle::new(state(MESH));
    let authority = Arc::new(CertificateAuthority::generate("cluster.local").expect("root"));
    let store = Arc::new(
        CertificateStore::with_authority(authority, "cluster.local", Duration::from_secs(3600))
            .expect("store"),
    );
    let (node, _node_drain, _node_watcher) = context(&handle, &store);
    let (waypoint, _waypoint_drain, _waypoint_watcher) = context(&handle, &store);
    let snapshot = handle.snapshot();
    let workload = |ip: &str| {
        workload_info(
            &snapshot
                .workload_by_ip(ip.parse().expect("ip"))
                .expect("workload"),
        )
    };
    // sleep's tunnels leave from its own address, as from a real pod's netns.
    let sleep_ip = "127.0.98.1".parse().expect("ip");
    let sleep = PodContext::new(
        workload("127.0.98.1"),
        Arc::new(PodAddressSockets(sleep_ip)),
        &store,
    )
    .expect("sleep");
    let echo =
        PodContext::new(workload("127.0.98.2"), Arc::new(HostSocketFactory), &store).expect("echo");
    let echo_hbone = TcpListener::bind(("127.0.98.2", HBONE_PORT))
        .await
        .expect("bind echo HBONE");
    tokio::spawn(listeners::serve_inbound_hbone(
        node.clone(),
        echo,
        echo_hbone,
    ));
    let waypoint_identity = SpiffeId::new("cluster.local", "default", "waypoint");
    let acceptor = TlsAcceptor::from(
        tls::server_config(store.clone(), waypoint_identity.clone()).expect("waypoint TLS"),
    );
    let handler = Arc::new(WaypointHandler::new(waypoint.clone(), waypoint_identity));
    let waypoint_listener = TcpListener::bind(("127.0.98.3", HBONE_PORT))
        .await
        .expect("bind waypoint");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = waypoint_listener.accept().await {
            tokio::spawn(handler.clone().serve_connection(acceptor.clone(), tcp));
        }
    });
    let app = TcpListener::bind("127.0.98.2:0").await.expect("bind app");
    let app_address = app.local_addr().expect("app address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = app.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    let outbound_listener = TcpListener::bind("127.0.98.1:0")
        .await
        .expect("bind outbound");
    let outbound: SocketAddr = outbound_listener.local_addr().expect("outbound address");
    tokio::spawn(listeners::serve_outbound(
        node.clone(),
        sleep,
        outbound_listener,
        Arc::new(listeners::FixedDestination(app_address)),
    ));
    println!(
        "set up: sleep 127.0.98.1 -> waypoint 127.0.98.3 -> echo 127.0.98.2 (app {app_address})"
    );

    let mut client = TcpStream::connect(outbound).await.expect("connect");
    client.write_all(b"before").await.expect("write");
    let mut echoed = [0u8; 6];
    within(
        "the echo through the waypoint",
        client.read_exact(&mut echoed),
    )
    .await
    .expect("read");
    let held_by_waypoint = waypoint.connections.len();
    handle.replace(state(&format!("{MESH}{DENY_SLEEP}")));
    let mut rest = Vec::new();
    let ended = within(
        "the connection to be closed after the DENY",
        client.read_to_end(&mut rest),
    )
    .await;
    let waypoint_closures = waypoint.metrics.policy_closures.load(Ordering::Relaxed);
    let node_closures = node.metrics.policy_closures.load(Ordering::Relaxed);
    println!(
        "observed: echoed {:?}; connections tracked by the waypoint {held_by_waypoint}; after the DENY: {ended:?} \
         with {} more bytes; closures at the waypoint {waypoint_closures}, at echo's node {node_closures}",
        String::from_utf8_lossy(&echoed),
        rest.len()
    );
    assert_eq!(&echoed, b"before");
    assert_eq!(held_by_waypoint, 1);
    assert!(rest.is_empty());
    assert_eq!(waypoint_closures, 1, "the waypoint enforces echo's policy");
    assert_eq!(
        node_closures, 0,
        "echo's node sees the waypoint's identity, which is allowed"
    );
}
