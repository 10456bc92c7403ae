//! Malformed traffic against a live daemon's inbound HBONE listener (a pod's `ip:15008`, reached
//! from its node): not TLS, TLS without a client certificate, HTTP/1.1 instead of h2, h2 requests
//! other than `CONNECT ip:port`, an oversized header block, more streams than the limit, a
//! client that stalls in the handshake or never sends its HTTP/2 preface, and an RST flood.
//! Then what a hostile client with a valid certificate tries: a `forwarded` source that is not
//! its own past a `sourceIps` DENY (refused `401`), a `CONNECT` to ztunnel's own ports in the
//! pod (`503` at once), and connections that open no stream — the HTTP/2 preface and nothing
//! else, SETTINGS and then silence, a live client that answers PINGs (closed within the
//! keep-alive bounds the daemon was started with). Each gets its answer or a clean close; after
//! each, a well-formed tunnel still works and the daemon's resident memory stays bounded
//! (printed before and after every case); the refusals and closes are counted in its metrics.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;
use bytes::Bytes;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};
use ztunnel::identity::{
    CertificateAuthority, SpiffeId, tls, verify::ExpectedIdentityServerVerifier,
};
use ztunnel_e2e::{
    apps::{Nginx, listening},
    cluster::Cluster,
    wait::{DEFAULT_TIMEOUT, wait_until},
};

/// One HBONE workload on node 1; host-local gives the first pod 198.18.1.2. Port 8080 is
/// denied to every source address of the test range, where the test's client really is.
const MESH: &str = r#"
workloads:
- {uid: t//web, name: web, namespace: default, serviceAccount: web, workloadIps: ["198.18.1.2"], protocol: HBONE, node: node-1}
policies:
- name: deny-8080-from-test-range
  namespace: default
  scope: Namespace
  action: Deny
  rules:
  - - - sourceIps: ["198.18.0.0/15"]
        destinationPorts: [8080]
"#;
/// The address a hostile client asserts in `forwarded: for=` (outside the DENY's range).
const SPOOFED_SOURCE: &str = "203.0.113.7:1234";
/// The daemon's keep-alive in this test (`--hbone-ping-interval-ms`, `--hbone-ping-timeout-ms`,
/// `--hbone-unused-timeout-ms`).
const PING_INTERVAL: Duration = Duration::from_millis(500);
const PING_TIMEOUT: Duration = Duration::from_millis(1000);
const UNUSED_TIMEOUT: Duration = Duration::from_millis(2000);
/// What a loaded CI machine may add to a configured bound before a close counts as missing.
const SCHEDULING_ALLOWANCE: Duration = Duration::from_secs(5);
const PAGE: &str = "served through a well-formed tunnel: ok-5c1e\n";
/// The daemon's handshake timeout in this test (`--handshake-timeout-ms`).
const HANDSHAKE_TIMEOUT_MS: u64 = 1000;
/// How long any one case may take before it counts as a hang.
const CASE_DEADLINE: Duration = Duration::from_secs(30);
/// A generous memory bound: no case may grow the daemon's RSS by more than this.
const RSS_GROWTH_BOUND_KIB: u64 = 64 * 1024;
/// HTTP/2 settings the server advertises (docs/architecture.md, "HBONE on the wire").
const SERVER_MAX_CONCURRENT_STREAMS: usize = 200;

#[test]
fn malformed_hbone_traffic_is_refused_cleanly_and_the_listener_keeps_serving() -> anyhow::Result<()>
{
    let mut cluster = Cluster::new("malformed", 1, MESH)?;
    let timeout = HANDSHAKE_TIMEOUT_MS.to_string();
    let millis = |duration: Duration| duration.as_millis().to_string();
    let (ping_interval, ping_timeout, unused_timeout) = (
        millis(PING_INTERVAL),
        millis(PING_TIMEOUT),
        millis(UNUSED_TIMEOUT),
    );
    cluster.node_mut(1).start_ztunnel(&[
        "--handshake-timeout-ms",
        &timeout,
        "--hbone-ping-interval-ms",
        &ping_interval,
        "--hbone-ping-timeout-ms",
        &ping_timeout,
        "--hbone-unused-timeout-ms",
        &unused_timeout,
    ])?;
    let web = cluster.pod(1, "default", "web")?;
    let _nginx = Nginx::start(&cluster, &web, PAGE)?;
    let node = cluster.node(1);
    let pid = node
        .ztunnel_pid()
        .context("node 1's ztunnel is not running")?;
    let hbone = SocketAddr::new(IpAddr::V4(web.ip), 15008);
    wait_until("the pod's HBONE listener", DEFAULT_TIMEOUT, || {
        listening(web.netns(), &hbone.to_string()).then_some(())
    })?;
    let client = Client::new(&node.ca_dir, hbone)?;
    let log_offset = std::fs::metadata(&node.log)
        .map(|meta| meta.len())
        .unwrap_or(0);
    println!(
        "set up: ztunnel pid {pid} with --handshake-timeout-ms {HANDSHAKE_TIMEOUT_MS}, PINGs every \
         {PING_INTERVAL:?} answered within {PING_TIMEOUT:?}, unused connections closed after \
         {UNUSED_TIMEOUT:?}; pod web {} (nginx on :80, port 8080 denied to 198.18.0.0/15), \
         HBONE {hbone}; clients run in node 1's netns",
        web.ip
    );

    let netns = format!("/var/run/netns/{}", node.netns.name);
    let reports = in_netns(&netns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(runtime.block_on(run_cases(&client, pid)))
    })?;

    println!(
        "\n{:<44} {:>9} {:>9}  outcome / tunnel after",
        "case", "rss KiB", "after"
    );
    for report in &reports {
        println!(
            "{:<44} {:>9} {:>9}  {} / {}",
            report.name,
            report.rss_before,
            report.rss_after,
            describe(&report.outcome),
            describe(&report.tunnel_after)
        );
    }
    let timeouts = node.wait_for_log(
        "a handshake timeout in the log",
        log_offset,
        &["HBONE connection", "handshake_timeout"],
    )?;
    println!("log: {timeouts}");
    let spoof = node.wait_for_log(
        "the refused forwarded source in the log",
        log_offset,
        &[
            "asserted a source address",
            &format!("claimed_source={SPOOFED_SOURCE}"),
        ],
    )?;
    println!("log: {spoof}");
    let metrics = node.run(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "http://127.0.0.1:15020/metrics",
    ])?;
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    let counted = |series: &str| -> f64 {
        metrics
            .lines()
            .filter(|line| line.starts_with(series))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let untrusted = counted("ztunnel_tunnels_refused_total{reason=\"untrusted_forwarded\"}");
    let loops = counted("ztunnel_tunnels_refused_total{reason=\"loop\"}");
    // The log line of a bare connect-and-close and its counter carry the same reason word.
    let io_error_line = node.wait_for_log(
        "a TLS I/O error in the log",
        log_offset,
        &["HBONE connection refused", "reason=\"tls_io_error\""],
    )?;
    println!("log: {io_error_line}");
    let io_errors = counted(
        "ztunnel_identity_failures_total{reporter=\"destination\",reason=\"tls_io_error\"}",
    );
    let ping_timeouts = counted(
        "ztunnel_hbone_connections_closed_total{reporter=\"destination\",reason=\"ping_timeout\"}",
    );
    let unused = counted(
        "ztunnel_hbone_connections_closed_total{reporter=\"destination\",reason=\"no_stream\"}",
    );
    println!(
        "metrics: refused untrusted_forwarded {untrusted}, loop {loops}; closed ping_timeout \
         {ping_timeouts}, no_stream {unused}; identity failures tls_io_error {io_errors}"
    );

    for report in &reports {
        assert!(
            report.outcome.is_ok(),
            "{}: {}",
            report.name,
            describe(&report.outcome)
        );
        assert!(
            report.tunnel_after.is_ok(),
            "{}: a well-formed tunnel failed afterwards: {}",
            report.name,
            describe(&report.tunnel_after)
        );
        assert!(
            report.rss_after < report.rss_before + RSS_GROWTH_BOUND_KIB,
            "{}: RSS grew from {} KiB to {} KiB",
            report.name,
            report.rss_before,
            report.rss_after
        );
    }
    assert!(
        io_errors >= 1.0,
        "a connect-and-close is counted under the reason its log line gives"
    );
    assert_eq!(
        untrusted, 1.0,
        "the spoofed forwarded source is counted once"
    );
    assert_eq!(
        loops, 3.0,
        "the three CONNECTs to ztunnel's own ports are counted"
    );
    assert!(
        ping_timeouts >= 2.0,
        "the preface-only and the silent client are counted as PING timeouts"
    );
    assert!(
        unused >= 1.0,
        "the client without a stream is counted as closed for carrying none"
    );
    Ok(())
}

struct Report {
    name: &'static str,
    outcome: anyhow::Result<String>,
    tunnel_after: anyhow::Result<String>,
    rss_before: u64,
    rss_after: u64,
}

fn describe(result: &anyhow::Result<String>) -> String {
    match result {
        Ok(text) => text.clone(),
        Err(error) => format!("FAILED: {error:#}"),
    }
}

async fn run_cases(client: &Client, pid: u32) -> Vec<Report> {
    let mut reports = Vec::new();
    macro_rules! case {
        ($name:expr, $future:expr) => {{
            let rss_before = rss_kib(pid);
            let outcome = match tokio::time::timeout(CASE_DEADLINE, $future).await {
                Ok(outcome) => outcome,
                Err(_) => Err(anyhow::anyhow!(
                    "no answer and no close within {CASE_DEADLINE:?}"
                )),
            };
            let tunnel_after = client.good_tunnel().await;
            let rss_after = rss_kib(pid);
            println!(
                "{}: {} (then: {})",
                $name,
                describe(&outcome),
                describe(&tunnel_after)
            );
            reports.push(Report {
                name: $name,
                outcome,
                tunnel_after,
                rss_before,
                rss_after,
            });
        }};
    }
    case!("baseline: a well-formed tunnel", client.good_tunnel());
    case!("not TLS: plaintext HTTP/1.1", client.not_tls());
    case!("TCP connect, then close", client.connect_and_close());
    case!(
        "TLS without a client certificate",
        client.no_client_certificate()
    );
    case!("TLS offering only ALPN http/1.1", client.alpn_http1());
    case!(
        "HTTP/1.1 inside TLS with ALPN h2",
        client.http1_over_h2_alpn()
    );
    case!(
        "h2 GET instead of CONNECT",
        client.request_status("GET", "https://198.18.1.2:80/", 400)
    );
    case!(
        "CONNECT to a name",
        client.request_status("CONNECT", "web.default.svc:80", 400)
    );
    case!(
        "CONNECT to another pod's address",
        client.request_status("CONNECT", "198.18.1.99:80", 400)
    );
    case!(
        "header block over the limit (100 KiB)",
        client.oversized_headers(100 * 1024)
    );
    case!(
        "oversized header block (1 MiB)",
        client.oversized_headers(1024 * 1024)
    );
    case!(
        "250 streams on one connection",
        client.too_many_streams(250)
    );
    case!(
        "RST flood: 2000 streams opened and reset",
        client.rst_flood(2000)
    );
    case!(
        "stall inside the ClientHello",
        client.stalled_client_hello()
    );
    case!(
        "TLS done, HTTP/2 preface never sent",
        client.no_h2_preface()
    );
    case!(
        "forwarded: another source past a sourceIps DENY",
        client.spoofed_source()
    );
    case!(
        "CONNECT to the pod's own 15008",
        client.request_status("CONNECT", "198.18.1.2:15008", 503)
    );
    case!(
        "CONNECT to the pod's own 15001",
        client.request_status("CONNECT", "198.18.1.2:15001", 503)
    );
    case!(
        "CONNECT to the pod's own 15006",
        client.request_status("CONNECT", "198.18.1.2:15006", 503)
    );
    case!(
        "HTTP/2 preface only, then nothing",
        client.silent_after(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec())
    );
    case!("SETTINGS, then nothing", client.silent_after(raw::start()));
    case!("a live h2 client that opens no stream", client.no_stream());
    reports
}

/// VmRSS of `pid` in KiB (0 if it cannot be read: the comparison then fails loudly).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Runs `work` on a thread that entered the network namespace at `netns` (only that thread
/// moves, so sockets it makes live there).
fn in_netns<T: Send + 'static>(
    netns: &str,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let file = std::fs::File::open(netns).with_context(|| format!("cannot open {netns}"))?;
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid netns fd affects only this thread.
        let result = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        anyhow::ensure!(
            result == 0,
            "setns failed: {}",
            std::io::Error::last_os_error()
        );
        work()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
}

/// The test's HBONE client: a workload certificate from the mesh root, and the raw tools.
struct Client {
    hbone: SocketAddr,
    app: SocketAddr,
    with_certificate: Arc<ClientConfig>,
    without_certificate: Arc<ClientConfig>,
    alpn_http1: Arc<ClientConfig>,
}

impl Client {
    fn new(ca_dir: &std::path::Path, hbone: SocketAddr) -> anyhow::Result<Self> {
        let authority = CertificateAuthority::load(
            &ca_dir.join("root-cert.pem"),
            &ca_dir.join("root-key.pem"),
        )?;
        let now = SystemTime::now();
        let pem = authority.issue_pem_between(
            &SpiffeId::new("cluster.local", "default", "client"),
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        )?;
        let chain = CertificateDer::pem_slice_iter(pem.chain.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("issued chain")?;
        let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).context("issued key")?;
        let mut roots = RootCertStore::empty();
        roots.add(authority.root_der().clone())?;
        let roots = Arc::new(roots);
        let config = |certificate: bool, alpn: &[u8]| -> anyhow::Result<Arc<ClientConfig>> {
            let provider = tls::provider();
            let verifier = ExpectedIdentityServerVerifier::new(
                roots.clone(),
                vec![SpiffeId::new("cluster.local", "default", "web")],
                &provider,
            );
            let builder = ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier));
            let mut config = if certificate {
                builder.with_client_auth_cert(chain.clone(), key.clone_key())?
            } else {
                builder.with_no_client_auth()
            };
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(config))
        };
        Ok(Self {
            hbone,
            app: SocketAddr::new(hbone.ip(), 80),
            with_certificate: config(true, b"h2")?,
            without_certificate: config(false, b"h2")?,
            alpn_http1: config(true, b"http/1.1")?,
        })
    }

    async fn tcp(&self) -> anyhow::Result<TcpStream> {
        TcpStream::connect(self.hbone)
            .await
            .with_context(|| format!("TCP connect to {}", self.hbone))
    }

    async fn tls(&self, config: &Arc<ClientConfig>) -> anyhow::Result<TlsStream<TcpStream>> {
        let tcp = self.tcp().await?;
        TlsConnector::from(config.clone())
            .connect(ServerName::IpAddress(self.hbone.ip().into()), tcp)
            .await
            .context("TLS handshake")
    }

    async fn h2(&self) -> anyhow::Result<h2::client::SendRequest<Bytes>> {
        let tls = self.tls(&self.with_certificate).await?;
        let (sender, connection) = h2::client::handshake(tls).await?;
        tokio::spawn(connection);
        Ok(sender.ready().await?)
    }

    /// `CONNECT` to nginx through a fresh connection, GET / through the tunnel, check the page.
    async fn good_tunnel(&self) -> anyhow::Result<String> {
        let work = async {
            let mut sender = self.h2().await?;
            let request = http::Request::builder()
                .method("CONNECT")
                .uri(self.app.to_string())
                .header("forwarded", "for=\"198.18.1.1:40000\"")
                .body(())?;
            let (response, mut send) = sender.send_request(request, false)?;
            let response = response.await?;
            anyhow::ensure!(response.status() == 200, "answered {}", response.status());
            send.send_data(
                Bytes::from_static(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n"),
                true,
            )?;
            let mut body = response.into_body();
            let mut received = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk?;
                let _ = body.flow_control().release_capacity(chunk.len());
                received.extend_from_slice(&chunk);
            }
            let text = String::from_utf8_lossy(&received);
            anyhow::ensure!(text.contains(PAGE.trim()), "unexpected answer {text:?}");
            Ok(format!("tunnel ok ({} bytes)", received.len()))
        };
        tokio::time::timeout(CASE_DEADLINE, work)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the tunnel hung")))
    }

    async fn connect_and_close(&self) -> anyhow::Result<String> {
        let tcp = self.tcp().await?;
        let local = tcp.local_addr()?;
        drop(tcp);
        Ok(format!("connected from {local} and closed"))
    }

    async fn not_tls(&self) -> anyhow::Result<String> {
        let mut tcp = self.tcp().await?;
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: 198.18.1.2\r\n\r\n")
            .await?;
        let (bytes, end) = read_until_closed(&mut tcp).await;
        Ok(format!("closed after {bytes} bytes ({end})"))
    }

    async fn no_client_certificate(&self) -> anyhow::Result<String> {
        // TLS 1.3: the client finishes first; the server's refusal arrives as an alert.
        let mut tls = match self.tls(&self.without_certificate).await {
            Ok(tls) => tls,
            Err(error) => return Ok(format!("handshake refused: {error:#}")),
        };
        let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let (bytes, end) = read_until_closed(&mut tls).await;
        anyhow::ensure!(
            bytes == 0,
            "the server sent {bytes} bytes of application data"
        );
        Ok(format!("closed ({end})"))
    }

    async fn alpn_http1(&self) -> anyhow::Result<String> {
        match self.tls(&self.alpn_http1).await {
            Err(error) => Ok(format!("handshake refused: {error:#}")),
            Ok(mut tls) => {
                let (bytes, end) = read_until_closed(&mut tls).await;
                anyhow::ensure!(
                    bytes == 0,
                    "the server sent {bytes} bytes of application data"
                );
                Ok(format!("closed after the handshake ({end})"))
            }
        }
    }

    async fn http1_over_h2_alpn(&self) -> anyhow::Result<String> {
        let mut tls = self.tls(&self.with_certificate).await?;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: 198.18.1.2\r\n\r\n")
            .await?;
        let (bytes, end) = read_until_closed(&mut tls).await;
        Ok(format!("closed after {bytes} bytes ({end})"))
    }

    async fn request_status(
        &self,
        method: &str,
        uri: &str,
        expected: u16,
    ) -> anyhow::Result<String> {
        let mut sender = self.h2().await?;
        let request = http::Request::builder().method(method).uri(uri).body(())?;
        let (response, _send) = sender.send_request(request, false)?;
        let status = response.await?.status();
        anyhow::ensure!(
            status == expected,
            "{method} {uri} answered {status}, expected {expected}"
        );
        Ok(format!("answered {status}"))
    }

    async fn oversized_headers(&self, size: usize) -> anyhow::Result<String> {
        let mut sender = self.h2().await?;
        let request = http::Request::builder()
            .method("CONNECT")
            .uri(self.app.to_string())
            .header("x-padding", "a".repeat(size))
            .body(())?;
        let (response, _send) = sender.send_request(request, false)?;
        match response.await {
            Ok(response) if response.status() == 200 => {
                anyhow::bail!("a {size}-byte header block was accepted (200)")
            }
            Ok(response) => Ok(format!("answered {}", response.status())),
            Err(error) => Ok(format!("refused: {error}")),
        }
    }

    /// Opens `count` `CONNECT` streams at once (raw frames: a client library would queue past
    /// the server's limit); counts what each stream got.
    async fn too_many_streams(&self, count: u32) -> anyhow::Result<String> {
        let mut tls = self.tls(&self.with_certificate).await?;
        let mut burst = raw::start();
        let authority = self.app.to_string();
        for index in 0..count {
            burst.extend(raw::connect_headers(2 * index + 1, &authority));
        }
        tls.write_all(&burst).await?;
        let (mut answered, mut refused, mut other_resets) = (0usize, 0usize, 0usize);
        let mut end = String::from("connection still open");
        while answered + refused + other_resets < count as usize {
            match raw::read_frame(&mut tls).await {
                Ok(frame) => match frame.kind {
                    raw::HEADERS => answered += 1,
                    raw::RST_STREAM if frame.error_code() == Some(raw::REFUSED_STREAM) => {
                        refused += 1
                    }
                    raw::RST_STREAM => other_resets += 1,
                    raw::SETTINGS if frame.flags & raw::ACK == 0 => {
                        tls.write_all(&raw::settings_ack()).await?
                    }
                    raw::PING if frame.flags & raw::ACK == 0 => {
                        tls.write_all(&raw::ping_ack(&frame.payload)).await?
                    }
                    raw::GOAWAY => {
                        end = format!("GOAWAY {:?}", frame.error_code());
                        break;
                    }
                    _ => {}
                },
                Err(error) => {
                    end = format!("closed: {error}");
                    break;
                }
            }
        }
        let summary = format!(
            "{answered} answered, {refused} refused with REFUSED_STREAM, {other_resets} other resets; {end}"
        );
        anyhow::ensure!(
            answered <= SERVER_MAX_CONCURRENT_STREAMS,
            "more than {SERVER_MAX_CONCURRENT_STREAMS} concurrent streams were served: {summary}"
        );
        anyhow::ensure!(
            refused + other_resets >= count as usize - SERVER_MAX_CONCURRENT_STREAMS
                || end.starts_with("GOAWAY"),
            "streams past the limit were neither refused nor the connection closed: {summary}"
        );
        Ok(summary)
    }

    /// Opens and immediately resets `count` streams, then PINGs: the server either survives
    /// (PING answered) or ends the connection (GOAWAY / close); it must not hang.
    async fn rst_flood(&self, count: u32) -> anyhow::Result<String> {
        let mut tls = self.tls(&self.with_certificate).await?;
        let mut burst = raw::start();
        let authority = self.app.to_string();
        for index in 0..count {
            let stream = 2 * index + 1;
            burst.extend(raw::connect_headers(stream, &authority));
            burst.extend(raw::rst_stream(stream, raw::CANCEL));
        }
        burst.extend(raw::ping());
        let started = Instant::now();
        let _ = tls.write_all(&burst).await;
        let (mut answered, mut resets) = (0usize, 0usize);
        let end = loop {
            match raw::read_frame(&mut tls).await {
                Ok(frame) => match frame.kind {
                    raw::HEADERS => answered += 1,
                    raw::RST_STREAM => resets += 1,
                    raw::SETTINGS if frame.flags & raw::ACK == 0 => {
                        let _ = tls.write_all(&raw::settings_ack()).await;
                    }
                    raw::PING if frame.flags & raw::ACK != 0 => {
                        break "survived: PING answered".to_owned();
                    }
                    raw::PING => {
                        let _ = tls.write_all(&raw::ping_ack(&frame.payload)).await;
                    }
                    raw::GOAWAY => {
                        break format!("GOAWAY with error code {:?}", frame.error_code());
                    }
                    _ => {}
                },
                Err(error) => break format!("closed: {error}"),
            }
        };
        Ok(format!(
            "{end} after {:?}; {answered} streams answered, {resets} resets",
            started.elapsed()
        ))
    }

    async fn stalled_client_hello(&self) -> anyhow::Result<String> {
        let mut tcp = self.tcp().await?;
        // A TLS record header announcing a 512-byte ClientHello, and the first bytes of it.
        tcp.write_all(&[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ])
        .await?;
        let started = Instant::now();
        let (bytes, end) = read_until_closed(&mut tcp).await;
        Ok(format!(
            "closed after {:?}, {bytes} bytes ({end})",
            started.elapsed()
        ))
    }

    /// CONNECT to the denied port 8080: without `forwarded`, then asserting a source outside
    /// the DENY's range. Both must be refused `401`: policy sees the connection's address.
    async fn spoofed_source(&self) -> anyhow::Result<String> {
        let authority = SocketAddr::new(self.hbone.ip(), 8080).to_string();
        let mut answers = Vec::new();
        for forwarded in [None, Some(format!("for=\"{SPOOFED_SOURCE}\""))] {
            let mut sender = self.h2().await?;
            let mut request = http::Request::builder()
                .method("CONNECT")
                .uri(authority.as_str());
            if let Some(value) = &forwarded {
                request = request.header("forwarded", value.as_str());
            }
            let (response, _send) = sender.send_request(request.body(())?, false)?;
            answers.push((forwarded, response.await?.status()));
        }
        let summary = format!("{answers:?}");
        anyhow::ensure!(
            answers.iter().all(|(_, status)| *status == 401),
            "expected 401 with and without the spoofed source: {summary}"
        );
        Ok(summary)
    }

    /// TLS, then `first` (a preface, or a preface and SETTINGS), then silence: no SETTINGS ACK,
    /// no PING answered. The server must close within one PING interval and timeout.
    async fn silent_after(&self, first: Vec<u8>) -> anyhow::Result<String> {
        let mut tls = self.tls(&self.with_certificate).await?;
        tls.write_all(&first).await?;
        let started = Instant::now();
        let bound = PING_INTERVAL + PING_TIMEOUT + SCHEDULING_ALLOWANCE;
        let Ok((bytes, end)) = tokio::time::timeout(bound, read_until_closed(&mut tls)).await
        else {
            anyhow::bail!("still open after {bound:?} (PING interval + timeout + allowance)");
        };
        Ok(format!(
            "closed after {:?} (bound {bound:?}), {bytes} bytes ({end})",
            started.elapsed()
        ))
    }

    /// A client library that answers PINGs but never opens a stream: the server must send
    /// GOAWAY and close once the connection carried no stream for the unused timeout.
    async fn no_stream(&self) -> anyhow::Result<String> {
        let tls = self.tls(&self.with_certificate).await?;
        let (_sender, connection) = h2::client::handshake(tls).await?;
        let started = Instant::now();
        let bound = UNUSED_TIMEOUT + SCHEDULING_ALLOWANCE;
        let Ok(end) = tokio::time::timeout(bound, connection).await else {
            anyhow::bail!("still open after {bound:?} (unused timeout + allowance)");
        };
        Ok(format!(
            "closed after {:?} (bound {bound:?}): {end:?}",
            started.elapsed()
        ))
    }

    async fn no_h2_preface(&self) -> anyhow::Result<String> {
        let mut tls = self.tls(&self.with_certificate).await?;
        let started = Instant::now();
        let (bytes, end) = read_until_closed(&mut tls).await;
        Ok(format!(
            "closed after {:?}, {bytes} bytes ({end})",
            started.elapsed()
        ))
    }
}

/// Reads until EOF or an error (the case's deadline bounds it); returns the bytes read and how
/// the connection ended.
async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin)) -> (usize, String) {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) => return (total, "EOF".to_owned()),
            Ok(count) => total += count,
            Err(error) => return (total, format!("error: {error}")),
        }
    }
}

/// HTTP/2 frames by hand (RFC 9113), for what a well-behaved client library refuses to send.
mod raw {
    use super::*;

    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const ACK: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;

    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub payload: Vec<u8>,
    }

    impl Frame {
        /// The error code of RST_STREAM (first word) or GOAWAY (second word).
        pub fn error_code(&self) -> Option<u32> {
            let offset = if self.kind == GOAWAY { 4 } else { 0 };
            let word = self.payload.get(offset..offset + 4)?;
            Some(u32::from_be_bytes(word.try_into().ok()?))
        }
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes();
        let mut out = vec![length[1], length[2], length[3], kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// The client preface and an empty SETTINGS frame.
    pub fn start() -> Vec<u8> {
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        out
    }

    pub fn settings_ack() -> Vec<u8> {
        frame(SETTINGS, ACK, 0, &[])
    }

    pub fn ping() -> Vec<u8> {
        frame(PING, 0, 0, b"ztunnel!")
    }

    /// The answer to the server's keep-alive PING.
    pub fn ping_ack(payload: &[u8]) -> Vec<u8> {
        frame(PING, ACK, 0, payload)
    }

    pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
        frame(RST_STREAM, 0, stream, &code.to_be_bytes())
    }

    /// HEADERS for `CONNECT authority` as HPACK literals without indexing (RFC 7541 §6.2.2).
    pub fn connect_headers(stream: u32, authority: &str) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in [(":method", "CONNECT"), (":authority", authority)] {
            block.push(0x00);
            block.push(name.len() as u8);
            block.extend_from_slice(name.as_bytes());
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        frame(HEADERS, END_HEADERS, stream, &block)
    }

    pub async fn read_frame(stream: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Frame> {
        let mut header = [0u8; 9];
        stream.read_exact(&mut header).await?;
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; length];
        stream.read_exact(&mut payload).await?;
        Ok(Frame {
            kind: header[3],
            flags: header[4],
            payload,
        })
    }
}
