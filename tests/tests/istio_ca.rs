//! Workload certificates from Istio's CA (`CreateCertificate`), against the test CA service:
//! they come from the CA with its chain and ztunnel's impersonation metadata and credentials,
//! carry tunnels, renew at half-life, and survive a CA outage.

mod hbone_support;

use std::{sync::Arc, time::Duration};

use hbone_support::{DEADLINE, Node, id, loopback, scratch_dir, wait_until, within};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use ztunnel::{
    identity::{
        CertificateAuthority, CertificateStore, SpiffeId,
        ca_client::{CaClient, CaClientConfig},
        ca_renewal,
        store::{CertificateLease, root_store},
    },
    proxy::ProxyLimits,
};
use ztunnel_e2e::ca_service::TestCaService;

/// The test CA backdates certificates by a minute (clock skew) and they renew at half their
/// lifetime: 62 s of lifetime puts the renewal about one second after issue.
const SHORT_LIFETIME: Duration = Duration::from_secs(62);

struct Mesh {
    ca: TestCaService,
    store: Arc<CertificateStore>,
    _renewal: tokio::task::JoinHandle<()>,
    root: Arc<CertificateAuthority>,
}

async fn mesh(net: u8, lifetime: Duration) -> Mesh {
    hbone_support::init_tracing();
    let root = Arc::new(CertificateAuthority::generate("cluster.local").expect("root"));
    let ca = TestCaService::start(
        std::net::SocketAddr::new(loopback(net, 100), 0),
        root.clone(),
        lifetime,
    )
    .await
    .expect("test CA");
    let token = scratch_dir(&format!("istio-ca-{net}")).join("istio-token");
    std::fs::write(&token, "test-token\n").expect("write token");
    let roots = root_store(ca.root_pem().as_bytes(), "test root").expect("roots");
    let client = CaClient::new(
        CaClientConfig {
            address: ca.address().to_string(),
            token_file: Some(token),
            cluster_id: "test-cluster".to_owned(),
            lifetime: Duration::from_secs(3600),
        },
        roots,
    )
    .expect("CA client");
    let store = Arc::new(
        CertificateStore::with_istio_ca(
            Arc::new(client),
            "cluster.local",
            ca.root_pem().as_bytes(),
            "test root",
        )
        .expect("store"),
    );
    let renewal = ca_renewal::spawn(store.clone()).expect("renewal task");
    println!(
        "set up: test Istio CA on {} (intermediate under a new root), store asking it",
        ca.address()
    );
    Mesh {
        ca,
        store,
        _renewal: renewal,
        root,
    }
}

/// Leases `identity` (as a pod context does: what nobody leases is not renewed) and waits for
/// its first certificate; returns its serial and the lease.
async fn first_certificate(
    store: &Arc<CertificateStore>,
    identity: &SpiffeId,
) -> (String, CertificateLease) {
    let lease = store.lease(identity);
    let missing = store
        .wait_for(std::slice::from_ref(identity), DEADLINE)
        .await;
    assert!(
        missing.is_empty(),
        "timed out after {DEADLINE:?} waiting for the CA to issue {missing:?}"
    );
    let serial = store
        .certificate(identity)
        .expect("certificate")
        .serial
        .clone();
    (serial, lease)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_come_from_the_ca_and_carry_a_tunnel() {
    let mesh = mesh(93, Duration::from_secs(3600)).await;
    let node = Node::start_with_store(
        93,
        mesh.root.clone(),
        mesh.store.clone(),
        ProxyLimits::default(),
        |directory| directory,
    )
    .await;
    let app = node.app_listener().await;
    let outbound = node
        .outbound_to(app.local_addr().expect("app address"))
        .await;
    let server = tokio::spawn(async move {
        let (mut stream, _) = app.accept().await.expect("app accept");
        let mut request = [0u8; 5];
        stream.read_exact(&mut request).await.expect("app read");
        stream.write_all(b"pong!").await.expect("app write");
    });
    // The pods' certificates are asked for when their contexts are made; wait for them.
    let identities = [id("default", "sleep"), id("default", "echo")];
    let missing = mesh.store.wait_for(&identities, DEADLINE).await;
    let mut client = TcpStream::connect(outbound).await.expect("connect");
    client.write_all(b"ping!").await.expect("write");
    let mut answer = [0u8; 5];
    within(
        "the answer through the tunnel",
        client.read_exact(&mut answer),
    )
    .await
    .expect("read");
    within("the app", server).await.expect("app task");

    let requests = mesh.ca.requests();
    let sleep = mesh
        .store
        .certificate(&identities[0])
        .expect("sleep certificate");
    println!(
        "observed: missing after wait {missing:?}; answer {:?}; sleep's chain {} certificates; CA requests {requests:#?}",
        String::from_utf8_lossy(&answer),
        sleep.chain().len()
    );
    assert!(missing.is_empty());
    assert_eq!(&answer, b"pong!");
    assert_eq!(
        sleep.chain().len(),
        2,
        "leaf + intermediate, the root left out"
    );
    for identity in &identities {
        let asked = requests
            .iter()
            .find(|request| request.impersonated.as_deref() == Some(&identity.to_string()))
            .unwrap_or_else(|| panic!("no request impersonating {identity}"));
        assert_eq!(asked.authorization.as_deref(), Some("Bearer test-token"));
        assert_eq!(asked.cluster_id.as_deref(), Some("test-cluster"));
        assert_eq!(asked.validity_seconds, 3600);
        assert_eq!(asked.outcome, Ok(()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_renewed_at_half_life() {
    let mesh = mesh(94, SHORT_LIFETIME).await;
    let identity = id("default", "sleep");
    let (first, _lease) = first_certificate(&mesh.store, &identity).await;
    wait_until("a renewed certificate (another serial)", || {
        mesh.store
            .certificate(&identity)
            .is_ok_and(|certificate| certificate.serial != first)
    })
    .await;
    let renewed = mesh.store.certificate(&identity).expect("certificate");
    println!(
        "observed: first serial {first}, renewed serial {}, CA requests {}",
        renewed.serial,
        mesh.ca.requests().len()
    );
    assert_ne!(renewed.serial, first);
    assert!(mesh.ca.requests().len() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_outage_keeps_the_certificate_in_force_and_renewal_resumes() {
    let mut mesh = mesh(95, SHORT_LIFETIME).await;
    let identity = id("default", "sleep");
    let (first, _lease) = first_certificate(&mesh.store, &identity).await;
    // The CA fails its next answers (a renewal is due about a second after issue)...
    mesh.ca.set_failing(true);
    wait_until("a renewal the CA refused", || {
        mesh.ca
            .requests()
            .iter()
            .any(|request| request.outcome.is_err())
    })
    .await;
    let during_failure = mesh
        .store
        .certificate(&identity)
        .expect("certificate")
        .serial
        .clone();
    // ...then goes away altogether (listener and connections closed)...
    mesh.ca.stop().await;
    let refused_so_far = mesh.ca.requests().len();
    let during_outage = mesh
        .store
        .certificate(&identity)
        .expect("certificate")
        .serial
        .clone();
    // ...and comes back.
    mesh.ca.set_failing(false);
    mesh.ca.restart().await.expect("restart the CA");
    wait_until("a certificate from the restarted CA", || {
        mesh.store
            .certificate(&identity)
            .is_ok_and(|certificate| certificate.serial != first)
    })
    .await;
    let after = mesh
        .store
        .certificate(&identity)
        .expect("certificate")
        .serial
        .clone();
    let requests = mesh.ca.requests();
    let failed = requests
        .iter()
        .filter(|request| request.outcome.is_err())
        .count();
    println!(
        "observed: first {first}; while the CA refused: {during_failure}; while it was down: {during_outage} \
         ({refused_so_far} requests so far, {failed} refused); after restart: {after}"
    );
    assert_eq!(
        during_failure, first,
        "the certificate in force stays while the CA fails"
    );
    assert_eq!(
        during_outage, first,
        "the certificate in force stays while the CA is down"
    );
    assert_ne!(after, first, "renewal resumes when the CA is back");
    assert!(
        requests
            .last()
            .is_some_and(|request| request.outcome.is_ok())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_whose_certificate_does_not_chain_to_the_mesh_root_is_refused() {
    hbone_support::init_tracing();
    let mesh_root = CertificateAuthority::generate("cluster.local").expect("mesh root");
    let other_root = Arc::new(CertificateAuthority::generate("cluster.local").expect("other"));
    let impostor = TestCaService::start(
        std::net::SocketAddr::new(loopback(97, 100), 0),
        other_root,
        Duration::from_secs(3600),
    )
    .await
    .expect("impostor CA");
    let roots = root_store(mesh_root.root_pem().as_bytes(), "mesh root").expect("roots");
    let client = CaClient::new(
        CaClientConfig {
            address: impostor.address().to_string(),
            token_file: None,
            cluster_id: "test-cluster".to_owned(),
            lifetime: Duration::from_secs(3600),
        },
        roots,
    )
    .expect("CA client");
    let result = within("the CA call", client.fetch(&id("default", "sleep"))).await;
    let requests = impostor.requests();
    println!(
        "set up: a CA serving a certificate of another root; observed: {:?}, requests it received {}",
        result
            .as_ref()
            .map(|certificate| certificate.serial.clone()),
        requests.len()
    );
    let error = result.expect_err("a certificate from an untrusted CA");
    assert!(format!("{error}").contains("CreateCertificate"), "{error}");
    assert!(requests.is_empty(), "the CSR never reached the impostor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_nobody_needs_any_more_is_dropped_instead_of_renewed() {
    let mesh = mesh(98, SHORT_LIFETIME).await;
    let identity = id("default", "sleep");
    let (first, lease) = first_certificate(&mesh.store, &identity).await;
    // Its last pod leaves: at its renewal time the certificate goes.
    drop(lease);
    wait_until("the unneeded certificate to be dropped", || {
        !mesh.store.has_certificate(&identity)
    })
    .await;
    let requests = mesh.ca.requests().len();
    println!("observed: {first} dropped at renewal time; the CA got {requests} request(s)");
    assert_eq!(requests, 1, "it was not renewed");
}
