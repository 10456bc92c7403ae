//! Inbound plaintext (15006): policy applies with no peer identity (so only rules that need
//! none can allow), then the connection goes to its original destination.

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
        Drain, PodContext, ProxyContext, passthrough,
        state_directory::{StateDirectory, workload_info},
    },
    socket::HostSocketFactory,
    state::{State, StateHandle},
};

const ECHO: &str = r#"
workloads:
- uid: echo
  name: echo
  namespace: default
  serviceAccount: echo
  workloadIps: ["127.0.81.2"]
  protocol: HBONE
"#;

const ALLOW_SLEEP_ONLY: &str = r#"
policies:
- name: allow-sleep
  namespace: default
  scope: Namespace
  action: Allow
  rules:
  - - - principals:
        - !Suffix /sa/sleep
"#;

fn state(text: &str) -> State {
    State::from_config(config::parse(text, "test.yaml").expect("config")).expect("state")
}

async fn plaintext_through(
    context: &Arc<ProxyContext>,
    pod: &Arc<PodContext>,
    app: SocketAddr,
) -> Vec<u8> {
    let listener = TcpListener::bind("127.0.81.2:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (context, pod) = (context.clone(), pod.clone());
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = passthrough::handle_to(&context, &pod, stream, app).await;
    });
    let mut client = TcpStream::connect(address).await.unwrap();
    client.write_all(b"plain").await.unwrap();
    client.shutdown().await.unwrap();
    let mut answer = Vec::new();
    let _ = within(
        "plaintext connection to end",
        client.read_to_end(&mut answer),
    )
    .await;
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_forwarded_unless_policy_needs_an_identity() {
    init_tracing();
    let handle = StateHandle::new(state(ECHO));
    let authority = Arc::new(CertificateAuthority::generate("cluster.local").unwrap());
    let store = Arc::new(
        CertificateStore::with_authority(authority, "cluster.local", Duration::from_secs(3600))
            .unwrap(),
    );
    let (_drain, watch) = Drain::new();
    let context = ProxyContext::new(
        Arc::new(StateDirectory::new(handle.clone())),
        store.clone(),
        watch,
    );
    let echo = workload_info(
        &handle
            .snapshot()
            .workload_by_ip("127.0.81.2".parse().unwrap())
            .unwrap(),
    );
    let pod = PodContext::new(echo, Arc::new(HostSocketFactory), &store).unwrap();
    let app = TcpListener::bind("127.0.81.2:0").await.unwrap();
    let app_address = app.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, peer)) = app.accept().await {
            tokio::spawn(async move {
                let mut data = Vec::new();
                let _ = stream.read_to_end(&mut data).await;
                data.extend_from_slice(format!(" from {}", peer.ip()).as_bytes());
                let _ = stream.write_all(&data).await;
            });
        }
    });
    println!(
        "set up: workload echo 127.0.81.2, app {app_address}, plaintext listener handing to passthrough"
    );

    let open = plaintext_through(&context, &pod, app_address).await;
    handle.replace(state(&format!("{ECHO}{ALLOW_SLEEP_ONLY}")));
    let with_policy = plaintext_through(&context, &pod, app_address).await;
    println!(
        "observed: without policy {:?}; with an ALLOW needing principal */sa/sleep {:?}",
        String::from_utf8_lossy(&open),
        String::from_utf8_lossy(&with_policy)
    );
    assert_eq!(
        open, b"plain from 127.0.0.1",
        "forwarded, from the original source address"
    );
    assert!(
        with_policy.is_empty(),
        "plaintext has no principal, so the ALLOW cannot match"
    );
}
