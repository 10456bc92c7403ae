//! Workload certificates issued by an intermediate CA (Istio's plug-in `cacerts`): both sides
//! send leaf + intermediate and verify the other trusting only the mesh root.

mod hbone_support;

use std::sync::Arc;

use hbone_support::{Node, within};
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;
use ztunnel::{
    identity::{CertificateAuthority, tls},
    proxy::ProxyLimits,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_between_workloads_of_an_intermediate_ca_trusting_only_the_root() {
    let root = CertificateAuthority::generate("cluster.local").expect("root");
    let intermediate = Arc::new(root.intermediate("cluster-a").expect("intermediate"));
    let node = Node::start_with_authority(91, intermediate, ProxyLimits::default(), |directory| {
        directory
    })
    .await;
    let trusted = node.store.roots();
    println!(
        "set up: workloads issued by an intermediate under a root; trust bundle holds {} root(s)",
        trusted.len()
    );

    // The server's chain as a client sees it, through a plain TLS handshake.
    let client_certificate = node
        .store
        .certificate(&node.client.workload.identity)
        .expect("client certificate");
    let config = tls::client_config(
        &node.store,
        &client_certificate,
        vec![node.server.workload.identity.clone()],
    )
    .expect("client config");
    let tcp = TcpStream::connect(node.hbone_address)
        .await
        .expect("connect HBONE");
    let tls = within(
        "TLS handshake with the HBONE listener",
        TlsConnector::from(config).connect(ServerName::try_from("unused").expect("name"), tcp),
    )
    .await
    .expect("handshake through the intermediate");
    let server_chain_length = tls.get_ref().1.peer_certificates().map_or(0, <[_]>::len);
    drop(tls);

    // A tunnel: the server verifies the client's chain the same way.
    let app = node.app_listener().await;
    let outbound = node
        .outbound_to(app.local_addr().expect("app address"))
        .await;
    let server = tokio::spawn(async move {
        let (mut stream, _) = app.accept().await.expect("app accept");
        let mut request = [0u8; 5];
        stream.read_exact(&mut request).await.expect("app read");
        stream.write_all(b"pong!").await.expect("app write");
        request
    });
    let mut client = TcpStream::connect(outbound)
        .await
        .expect("connect outbound");
    client.write_all(b"ping!").await.expect("client write");
    let mut answer = [0u8; 5];
    within(
        "the answer through the tunnel",
        client.read_exact(&mut answer),
    )
    .await
    .expect("client read");
    let request = within("the app to get the request", server)
        .await
        .expect("app task");
    println!(
        "observed: server presented {server_chain_length} certificates; client chain {} certificates; app got {:?}, client got {:?}",
        client_certificate.chain().len(),
        String::from_utf8_lossy(&request),
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(trusted.len(), 1, "only the root is trusted");
    assert_eq!(server_chain_length, 2, "server sends leaf + intermediate");
    assert_eq!(
        client_certificate.chain().len(),
        2,
        "client sends leaf + intermediate"
    );
    assert_eq!(&request, b"ping!");
    assert_eq!(&answer, b"pong!");
}
