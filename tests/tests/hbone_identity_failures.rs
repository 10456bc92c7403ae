//! Identity failures are refused with a clear error (the text that is logged), counted in the
//! handshake-failure metric under their reason, and the proxy keeps serving afterwards.

mod hbone_support;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use hbone_support::{Node, id, loopback, within};
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsConnector;
use ztunnel::{
    identity::{CertificateAuthority, SpiffeId, tls, verify::ExpectedIdentityServerVerifier},
    proxy::{PodContext, WorkloadInfo, inbound, listeners, metrics::HandshakeSide},
    socket::HostSocketFactory,
};

/// A client certificate to offer, or none.
type ClientCert = Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>;

fn cert(
    authority: &CertificateAuthority,
    identity: &SpiffeId,
    from: SystemTime,
    to: SystemTime,
) -> ClientCert {
    let pem = authority
        .issue_pem_between(identity, from, to)
        .expect("issue");
    let chain = CertificateDer::pem_slice_iter(pem.chain.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    Some((
        chain,
        PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).expect("key"),
    ))
}

fn client_config(node: &Node, certificate: ClientCert, tls12: bool) -> Arc<ClientConfig> {
    let provider = tls::provider();
    let verifier = ExpectedIdentityServerVerifier::new(
        node.store.roots(),
        vec![node.server.workload.identity.clone()],
        &provider,
    );
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match certificate {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// One HBONE connection attempt against `serve_hbone_connection` called directly, so the
/// error it returns (and logs) can be checked. Returns (server error text, client outcome).
async fn attempt(
    node: &Node,
    config: Arc<ClientConfig>,
    authority: SocketAddr,
) -> (String, String) {
    let listener = TcpListener::bind(SocketAddr::new(node.server.workload.ips[0], 0))
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let (context, pod) = (node.context.clone(), node.server.clone());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        inbound::serve_hbone_connection(context, pod, tcp).await
    });
    let client = async move {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| format!("tcp: {e}"))?;
        let tls = TlsConnector::from(config)
            .connect(ServerName::IpAddress(address.ip().into()), tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let (sender, connection) = h2::client::handshake(tls)
            .await
            .map_err(|e| format!("h2: {e}"))?;
        tokio::spawn(connection);
        let mut sender = sender.ready().await.map_err(|e| format!("h2: {e}"))?;
        let request = http::Request::builder()
            .method("CONNECT")
            .uri(authority.to_string())
            .body(())
            .expect("request");
        let (response, _send) = sender
            .send_request(request, false)
            .map_err(|e| format!("h2: {e}"))?;
        let response = response.await.map_err(|e| format!("h2: {e}"))?;
        Ok::<_, String>(format!("answered {}", response.status()))
    };
    let client = within("client attempt", client)
        .await
        .unwrap_or_else(|error| error);
    let server = within("server side of the attempt", server)
        .await
        .expect("server task");
    (
        server
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "accepted".to_owned()),
        client,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_failures_are_refused_logged_counted_and_serving_continues() {
    let expected = WorkloadInfo::new(id("default", "expected"), loopback(31, 3));
    let impostor_listener = TcpListener::bind(SocketAddr::new(loopback(31, 3), 0))
        .await
        .expect("bind impostor");
    let impostor_port = impostor_listener.local_addr().unwrap().port();
    let node = Node::start_with(31, |directory| {
        directory.with_hbone_workload_on_port(expected.clone(), impostor_port)
    })
    .await;
    let app = node.app_listener().await;
    let app_address = app.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = app.accept().await {
            tokio::spawn(async move {
                let mut data = Vec::new();
                let _ = stream.read_to_end(&mut data).await;
                let _ = stream.write_all(&data).await;
            });
        }
    });
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let other_root = CertificateAuthority::generate("cluster.local").expect("other root");
    let client_id = id("default", "client");
    let cases: Vec<(&str, &str, Arc<ClientConfig>)> = vec![
        (
            "wrong trust domain",
            "wrong_trust_domain",
            client_config(
                &node,
                cert(
                    &node.authority,
                    &SpiffeId::new("other.domain", "default", "client"),
                    now - hour,
                    now + hour,
                ),
                false,
            ),
        ),
        (
            "expired certificate",
            "expired",
            client_config(
                &node,
                cert(&node.authority, &client_id, now - 2 * hour, now - hour),
                false,
            ),
        ),
        (
            "certificate from another root",
            "unknown_issuer",
            client_config(
                &node,
                cert(&other_root, &client_id, now - hour, now + hour),
                false,
            ),
        ),
        (
            "no client certificate",
            "no_client_certificate",
            client_config(&node, None, false),
        ),
        (
            "TLS 1.2 offered",
            "tls_version_not_1_3",
            client_config(
                &node,
                cert(&node.authority, &client_id, now - hour, now + hour),
                true,
            ),
        ),
    ];
    let mut observed = Vec::new();
    for (case, reason, config) in cases {
        let (server_error, client_outcome) = attempt(&node, config, app_address).await;
        let counted = node
            .context
            .metrics
            .handshake_failures(HandshakeSide::Inbound, reason);
        println!(
            "case {case:?}: server error {server_error:?}; client saw {client_outcome:?}; counted[{reason}] = {counted}"
        );
        observed.push((case, reason, server_error, client_outcome, counted));
    }

    // Outbound: a server at the destination's address presents someone else's certificate.
    let impostor = PodContext::new(
        WorkloadInfo::new(id("default", "impostor"), loopback(31, 3)),
        Arc::new(HostSocketFactory),
        &node.store,
    )
    .expect("impostor pod");
    tokio::spawn(listeners::serve_inbound_hbone(
        node.context.clone(),
        impostor,
        impostor_listener,
    ));
    let outbound_address = node
        .outbound_to(SocketAddr::new(loopback(31, 3), 8080))
        .await;
    let mut stream = TcpStream::connect(outbound_address)
        .await
        .expect("connect outbound");
    stream.write_all(b"secret").await.expect("write");
    let mut answer = Vec::new();
    let _ = within(
        "outbound to the impostor to close",
        stream.read_to_end(&mut answer),
    )
    .await;
    let unexpected = node
        .context
        .metrics
        .handshake_failures(HandshakeSide::Outbound, "unexpected_identity");
    println!(
        "case \"unexpected server SAN\": client got {} bytes; outbound counted[unexpected_identity] = {unexpected}",
        answer.len()
    );

    // And the node still serves a good tunnel.
    let outbound = node.outbound_to(app_address).await;
    let mut good = TcpStream::connect(outbound).await.expect("connect");
    good.write_all(b"still serving").await.expect("write");
    good.shutdown().await.expect("shutdown");
    let mut echoed = Vec::new();
    within("good tunnel echo", good.read_to_end(&mut echoed))
        .await
        .expect("read");
    println!(
        "after the failures: good tunnel echoed {:?}",
        String::from_utf8_lossy(&echoed)
    );

    for (case, reason, server_error, client_outcome, counted) in observed {
        assert!(
            server_error.contains(&format!("({reason})")),
            "{case}: error should name {reason}: {server_error}"
        );
        assert!(
            !client_outcome.starts_with("answered"),
            "{case}: the client must not get an answer: {client_outcome}"
        );
        assert_eq!(counted, 1, "{case}: counted once under {reason}");
    }
    assert!(answer.is_empty());
    assert_eq!(unexpected, 1);
    assert_eq!(echoed, b"still serving");
}
