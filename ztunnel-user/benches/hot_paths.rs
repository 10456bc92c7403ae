//! Micro-benchmarks of the proxy's hot paths (criterion; `cargo bench -p ztunnel-user`):
//! workload lookup by IP among 1,000 workloads, L4 policy evaluation with 100 policies, the
//! TCP copy loop on loopback, opening (and cleanly closing) an HBONE stream on a warm pool, and
//! exporting one connection's Istio metrics.

use std::{
    hint::black_box,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    runtime::Runtime,
};
use ztunnel::{
    admin::metrics::Metrics,
    authz::{ConnectionAttributes, evaluate, policy::Policy},
    config::parse,
    hbone::{HbonePool, Transferred, TunnelRequest},
    identity::{CertificateAuthority, CertificateStore, SpiffeId},
    proxy::{
        ConnectionObserver, Drain, PodContext, ProxyContext, ProxyLimits, WorkloadInfo,
        access_log::ConnectionRecord, copy::copy_tcp, directory::StaticDirectory,
        istio_metrics::IstioMetrics, listeners,
    },
    socket::{HostSocketFactory, SocketFactory},
    state::{State, StateHandle},
};
use ztunnel_common::constants::HBONE_PORT;

fn workload_ip(index: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(198, 18, 0, 0)) + index,
    ))
}

/// 1,000 workloads at [`workload_ip`] 0..1000.
fn thousand_workloads() -> State {
    let mut yaml = String::from("workloads:\n");
    for index in 0..1000 {
        yaml.push_str(&format!(
            "- {{uid: b//w{index}, name: w{index}, namespace: bench, serviceAccount: sa{index}, workloadIps: [\"{}\"], protocol: HBONE}}\n",
            workload_ip(index)
        ));
    }
    State::from_config(parse(&yaml, "bench").expect("bench config parses"))
        .expect("bench config is consistent")
}

fn workload_lookup(c: &mut Criterion) {
    let state = thousand_workloads();
    let hit = workload_ip(777);
    let miss = workload_ip(5000);
    c.bench_function("workload_by_ip/1000 workloads, hit", |b| {
        b.iter(|| state.workload_by_ip(black_box(hit)))
    });
    c.bench_function("workload_by_ip/1000 workloads, miss", |b| {
        b.iter(|| state.workload_by_ip(black_box(miss)))
    });
}

fn policy_evaluation(c: &mut Criterion) {
    // 50 DENY and 49 ALLOW policies that do not match, then the one ALLOW that does: the
    // evaluation walks all of them.
    let mut policies: Vec<Policy> = Vec::new();
    for index in 0..100 {
        let (action, principal) = match index {
            0..50 => ("Deny", format!("cluster.local/ns/other/sa/denied{index}")),
            50..99 => ("Allow", format!("cluster.local/ns/other/sa/allowed{index}")),
            _ => ("Allow", "cluster.local/ns/bench/sa/client".to_owned()),
        };
        let yaml = format!(
            "name: p{index}\nnamespace: bench\nscope: Namespace\naction: {action}\nrules: [[[{{principals: [!Exact {principal}], destinationPorts: [8080]}}]]]\n"
        );
        policies.push(serde_norway::from_str(&yaml).expect("bench policy parses"));
    }
    let workload =
        serde_norway::from_str("name: server\nnamespace: bench\nserviceAccount: server\n")
            .expect("bench workload parses");
    let connection = ConnectionAttributes {
        source_identity: Some(SpiffeId::new("cluster.local", "bench", "client")),
        source: "198.18.1.2:40000".parse().expect("literal"),
        destination_workload: Arc::new(workload),
        destination: "198.18.2.2:8080".parse().expect("literal"),
    };
    c.bench_function("authz evaluate/100 policies, last one allows", |b| {
        b.iter(|| evaluate(policies.iter(), black_box(&connection)))
    });
}

/// A writer → copy loop → reader chain on loopback; each iteration moves 4 MiB through it.
fn copy_loop(c: &mut Criterion) {
    const CHUNK: usize = 4 << 20;
    let runtime = Runtime::new().expect("tokio runtime");
    let (mut writer, mut reader) = runtime.block_on(async {
        let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let back = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let writer = TcpStream::connect(front.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (mut client, _) = front.accept().await.expect("accept");
        let mut upstream = TcpStream::connect(back.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (reader, _) = back.accept().await.expect("accept");
        let idle_timeout = ProxyLimits::default().idle_timeout;
        tokio::spawn(async move { copy_tcp(&mut client, &mut upstream, idle_timeout).await });
        (writer, reader)
    });
    let block = vec![0x5a_u8; CHUNK];
    let mut sink = vec![0u8; CHUNK];
    let mut group = c.benchmark_group("copy_tcp");
    group.throughput(Throughput::Bytes(CHUNK as u64));
    group.bench_function("4 MiB through the loopback copy loop", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let started = std::time::Instant::now();
                for _ in 0..iterations {
                    let (written, read) =
                        tokio::join!(writer.write_all(&block), reader.read_exact(&mut sink));
                    written.expect("write");
                    read.expect("read");
                }
                started.elapsed()
            })
        })
    });
    group.finish();
}

/// Opens CONNECT streams (answered 200, upstream connected) on an HBONE connection the pool
/// already holds, then drops them.
fn hbone_stream_open(c: &mut Criterion) {
    let runtime = Runtime::new().expect("tokio runtime");
    let client_ip: IpAddr = "127.0.201.1".parse().expect("literal");
    let server_ip: IpAddr = "127.0.201.2".parse().expect("literal");
    let authority = Arc::new(CertificateAuthority::generate("cluster.local").expect("CA"));
    let store = Arc::new(
        CertificateStore::with_authority(authority, "cluster.local", Duration::from_secs(3600))
            .expect("store"),
    );
    let client = SpiffeId::new("cluster.local", "bench", "client");
    let server = SpiffeId::new("cluster.local", "bench", "server");
    let (pool, upstream) = runtime.block_on(async {
        let directory = StaticDirectory::new()
            .with_workload(WorkloadInfo::new(client.clone(), client_ip), true)
            .with_workload(WorkloadInfo::new(server.clone(), server_ip), true);
        let (drain, watch) = Drain::new();
        std::mem::forget(drain);
        let context = ProxyContext::new(Arc::new(directory), store.clone(), watch);
        let pod = PodContext::new(
            WorkloadInfo::new(server.clone(), server_ip),
            Arc::new(HostSocketFactory),
            &store,
        )
        .expect("pod context");
        let hbone = TcpListener::bind((server_ip, HBONE_PORT))
            .await
            .expect("bind the HBONE listener on 127.0.201.2:15008");
        tokio::spawn(listeners::serve_inbound_hbone(context, pod, hbone));
        let application = TcpListener::bind((server_ip, 0)).await.expect("bind");
        let upstream = application.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = application.accept().await {
                drop(stream);
            }
        });
        (HbonePool::new(store.clone()), upstream)
    });
    let expected = [server.clone()];
    let request = TunnelRequest {
        source: &client,
        expected: &expected,
        hbone_address: SocketAddr::new(server_ip, HBONE_PORT),
        authority: upstream,
        forwarded_for: SocketAddr::new(client_ip, 40000),
        baggage: None,
        sockets: &ClientPodSockets(client_ip),
    };
    // Warm the pool: the TLS handshake happens here, not in the measurement.
    runtime
        .block_on(pool.connect(request))
        .expect("first tunnel");
    // Each tunnel is ended cleanly (END_STREAM both ways) through the copy loop with a local
    // socket whose peer has already closed: dropping open streams instead makes h2 count local
    // resets and GOAWAY the pooled connection after 1,024 of them.
    let local = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let local_address = local.local_addr().expect("addr");
    c.bench_function("hbone stream open+close/warm pool", |b| {
        b.to_async(&runtime).iter(|| async {
            let stream = pool.connect(request).await.expect("tunnel");
            let peer = TcpStream::connect(local_address).await.expect("connect");
            let (mut tcp, _) = local.accept().await.expect("accept");
            drop(peer);
            let (_, result) = stream
                .copy_with(&mut tcp, ProxyLimits::default().idle_timeout)
                .await;
            result.expect("tunnel ends cleanly");
        })
    });
    println!(
        "hbone stream open: {} TLS connection(s) opened by the pool",
        pool.connections_opened()
    );
}

/// What exporting one connection costs: Istio's labels from the state, counted at open and
/// close.
fn connection_metrics(c: &mut Criterion) {
    let observer = IstioMetrics::new(Metrics::new(), StateHandle::new(thousand_workloads()));
    let record = ConnectionRecord {
        direction: ztunnel::proxy::access_log::Direction::Outbound,
        source: SocketAddr::new(workload_ip(1), 40000),
        destination: SocketAddr::new(workload_ip(777), 8080),
        source_identity: None,
        destination_identity: None,
        mutual_tls: true,
        via: None,
        started: std::time::Instant::now(),
        peer_baggage: None,
    };
    let transferred = Transferred {
        sent: 1,
        received: 1,
    };
    c.bench_function("istio metrics/connection opened and closed", |b| {
        b.iter(|| observer.opened(black_box(&record)).closed(transferred))
    });
}

criterion_group!(
    hot_paths,
    connection_metrics,
    workload_lookup,
    policy_evaluation,
    copy_loop,
    hbone_stream_open
);
criterion_main!(hot_paths);

/// The client pod's sockets leave from its address, as from a real pod's netns: the server
/// refuses a `forwarded` source that the connection does not come from.
struct ClientPodSockets(IpAddr);

impl SocketFactory for ClientPodSockets {
    fn new_tcp_socket(&self, ipv6: bool) -> std::io::Result<tokio::net::TcpSocket> {
        let socket = HostSocketFactory.new_tcp_socket(ipv6)?;
        socket.bind(SocketAddr::new(self.0, 0))?;
        Ok(socket)
    }
}
