//! Shared setup of the HBONE tests: a CA, a certificate store, a node's proxy context, pods on
//! loopback addresses (each test uses its own 127.0.N.0/24 so tests run in parallel on the real
//! ports), and checksummed data streams.
#![allow(dead_code)]

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Once},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
};
use ztunnel::{
    identity::{CertificateAuthority, CertificateStore, SpiffeId},
    proxy::{
        Drain, PodContext, ProxyContext, ProxyLimits, WorkloadInfo,
        directory::StaticDirectory,
        listeners::{self, FixedDestination},
        observer::NoObserver,
    },
    socket::{HostSocketFactory, PodAddressSockets},
};

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .init();
    });
}

/// Polls `condition` until it holds, failing with `what` after [`DEADLINE`].
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `future`, failing with `what` after [`DEADLINE`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {DEADLINE:?} waiting for: {what}"))
}

pub fn id(namespace: &str, service_account: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", namespace, service_account)
}

/// `127.0.<net>.<host>`.
pub fn loopback(net: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, net, host))
}

/// One node's ztunnel on loopback with a client pod (`.1`, sa `sleep`) and a server pod
/// (`.2`, sa `echo`) whose HBONE listener is on `127.0.<net>.2`, on an ephemeral port that the
/// directory knows.
pub struct Node {
    pub authority: Arc<CertificateAuthority>,
    pub store: Arc<CertificateStore>,
    pub context: Arc<ProxyContext>,
    pub drain: Option<Drain>,
    pub client: Arc<PodContext>,
    pub server: Arc<PodContext>,
    pub hbone_address: SocketAddr,
}

impl Node {
    /// Starts the node with a directory holding both pods as HBONE workloads.
    pub async fn start(net: u8) -> Self {
        Self::start_with(net, |directory| directory).await
    }

    /// Starts the node; `customize` may add workloads or denials to the directory.
    pub async fn start_with(
        net: u8,
        customize: impl FnOnce(StaticDirectory) -> StaticDirectory,
    ) -> Self {
        Self::start_with_limits(net, ProxyLimits::default(), customize).await
    }

    /// Starts the node with `limits` instead of the default ones.
    pub async fn start_with_limits(
        net: u8,
        limits: ProxyLimits,
        customize: impl FnOnce(StaticDirectory) -> StaticDirectory,
    ) -> Self {
        let authority = Arc::new(CertificateAuthority::generate("cluster.local").expect("root"));
        Self::start_with_authority(net, authority, limits, customize).await
    }

    /// Starts the node with workload certificates from `authority` (a root or an intermediate).
    pub async fn start_with_authority(
        net: u8,
        authority: Arc<CertificateAuthority>,
        limits: ProxyLimits,
        customize: impl FnOnce(StaticDirectory) -> StaticDirectory,
    ) -> Self {
        let store = Arc::new(
            CertificateStore::with_authority(
                authority.clone(),
                "cluster.local",
                Duration::from_secs(3600),
            )
            .expect("store"),
        );
        Self::start_with_store(net, authority, store, limits, customize).await
    }

    /// Starts the node with workload certificates from `store` (e.g. Istio's CA) under the
    /// mesh root `authority`.
    pub async fn start_with_store(
        net: u8,
        authority: Arc<CertificateAuthority>,
        store: Arc<CertificateStore>,
        limits: ProxyLimits,
        customize: impl FnOnce(StaticDirectory) -> StaticDirectory,
    ) -> Self {
        init_tracing();
        let client_info = WorkloadInfo::new(id("default", "sleep"), loopback(net, 1));
        let server_info = WorkloadInfo::new(id("default", "echo"), loopback(net, 2));
        // An ephemeral HBONE port: 15008 on the host may be taken by another test suite.
        let listener = TcpListener::bind(SocketAddr::new(loopback(net, 2), 0))
            .await
            .expect("bind HBONE listener");
        let hbone_address = listener.local_addr().expect("HBONE address");
        let directory = customize(
            StaticDirectory::new()
                .with_workload(client_info.clone(), true)
                .with_hbone_workload_on_port(server_info.clone(), hbone_address.port()),
        );
        let (drain, watch) = Drain::new();
        let context = ProxyContext::with_limits(
            Arc::new(directory),
            store.clone(),
            watch,
            Arc::new(NoObserver),
            limits,
        );
        // The client pod's HBONE connections leave from its address, as from a real pod's netns.
        let client_sockets = Arc::new(PodAddressSockets(client_info.ips[0]));
        let client = PodContext::new(client_info, client_sockets, &store).expect("client pod");
        let server =
            PodContext::new(server_info, Arc::new(HostSocketFactory), &store).expect("server pod");
        tokio::spawn(listeners::serve_inbound_hbone(
            context.clone(),
            server.clone(),
            listener,
        ));
        println!(
            "node: CA root for cluster.local, client pod {} ({}), server pod {} ({}), HBONE on {hbone_address}",
            client.workload.ips[0],
            client.workload.identity,
            server.workload.ips[0],
            server.workload.identity
        );
        Self {
            authority,
            store,
            context,
            drain: Some(drain),
            client,
            server,
            hbone_address,
        }
    }

    /// Starts an outbound listener for the client pod whose connections all go to `destination`.
    pub async fn outbound_to(&self, destination: SocketAddr) -> SocketAddr {
        let listener = TcpListener::bind(SocketAddr::new(self.client.workload.ips[0], 0))
            .await
            .expect("bind outbound");
        let address = listener.local_addr().expect("outbound address");
        tokio::spawn(listeners::serve_outbound(
            self.context.clone(),
            self.client.clone(),
            listener,
            Arc::new(FixedDestination(destination)),
        ));
        address
    }

    /// An application listener on the server pod's address.
    pub async fn app_listener(&self) -> TcpListener {
        TcpListener::bind(SocketAddr::new(self.server.workload.ips[0], 0))
            .await
            .expect("bind app")
    }
}

/// Block size of the checksummed streams.
const BLOCK: usize = 64 * 1024;

/// Sends `total` bytes of a pattern (a fixed random block stamped with its index), then shuts
/// down the write side. Returns the SHA-256 of what was sent.
pub async fn send_pattern(
    writer: &mut (impl AsyncWrite + Unpin),
    total: u64,
    seed: u8,
) -> std::io::Result<Vec<u8>> {
    let mut block = vec![0u8; BLOCK];
    for (index, byte) in block.iter_mut().enumerate() {
        *byte = (index as u8).wrapping_mul(31).wrapping_add(seed) ^ ((index >> 8) as u8);
    }
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut sent = 0u64;
    let mut index = 0u64;
    while sent < total {
        block[..8].copy_from_slice(&index.to_be_bytes());
        let length = (total - sent).min(BLOCK as u64) as usize;
        writer.write_all(&block[..length]).await?;
        digest.update(&block[..length]);
        sent += length as u64;
        index += 1;
    }
    writer.shutdown().await?;
    Ok(digest.finish().as_ref().to_vec())
}

/// Reads to EOF; returns the byte count and SHA-256.
pub async fn receive_digest(
    reader: &mut (impl AsyncRead + Unpin),
) -> std::io::Result<(u64, Vec<u8>)> {
    let mut buffer = vec![0u8; BLOCK];
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut total = 0u64;
    loop {
        let count = reader.read(&mut buffer).await?;
        if count == 0 {
            return Ok((total, digest.finish().as_ref().to_vec()));
        }
        digest.update(&buffer[..count]);
        total += count as u64;
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Writes `<dir>/<name>-cert.pem` and `<name>-key.pem` for `identity`, valid for an hour.
pub fn write_workload_pem(
    authority: &CertificateAuthority,
    dir: &std::path::Path,
    name: &str,
    identity: &SpiffeId,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let now = std::time::SystemTime::now();
    let pem = authority
        .issue_pem_between(
            identity,
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        )
        .expect("issue");
    let cert = dir.join(format!("{name}-cert.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert, pem.chain).expect("write cert");
    std::fs::write(&key, pem.key).expect("write key");
    (cert, key)
}

/// A fresh directory under the target dir (removed first if a previous run left it).
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/hbone-tests")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A free port on `ip` (bound and released; for servers this test does not bind itself).
pub fn free_port(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port()
}
