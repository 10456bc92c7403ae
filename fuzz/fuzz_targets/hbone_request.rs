//! HBONE request handling from raw bytes: the input is what a client sends after TLS (HTTP/2
//! preface, SETTINGS, HEADERS, DATA, RST_STREAM, ... or garbage), fed to the production
//! `hbone::server::serve` over an in-memory pipe. Every stream reaches the production
//! `parse_connect`; a handler accepts or refuses what passes it. The server must end (the input
//! ends with EOF) without a panic; time is virtual, so timeouts cost nothing.
#![no_main]

use std::{sync::Arc, time::Duration};

use http::StatusCode;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ztunnel::{
    hbone::{Answer, ConnectHandler, HboneRequest, PeerInfo, server},
    identity::SpiffeId,
};

/// Accepts authorities with an even port (the stream is then dropped), refuses the others.
struct Handler;

impl ConnectHandler for Handler {
    async fn handle(&self, request: HboneRequest, answer: Answer) {
        if request.authority.port() % 2 == 0 {
            drop(answer.accept());
        } else {
            answer.refuse(StatusCode::SERVICE_UNAVAILABLE);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    else {
        return;
    };
    runtime.block_on(drive(data));
});

async fn drive(data: &[u8]) {
    let (mut client, server_side) = tokio::io::duplex(64 * 1024);
    let peer = PeerInfo {
        address: "198.18.2.3:40000".parse().expect("literal address"),
        identity: SpiffeId::new("cluster.local", "default", "client"),
        certificate_serial: "01".to_owned(),
    };
    let limits = server::ServeLimits {
        preface_timeout: Duration::from_secs(10),
        keepalive: ztunnel::hbone::Keepalive::default(),
    };
    let serving = server::serve(server_side, peer, Arc::new(Handler), limits, std::future::pending());
    let talking = async {
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        // Drain the answers so the server never blocks on a full pipe.
        let mut sink = vec![0u8; 16 * 1024];
        while matches!(client.read(&mut sink).await, Ok(count) if count > 0) {}
    };
    // Virtual time: a server that neither ends nor errors is cut off after a minute of it.
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(serving, talking)
    })
    .await;
}
