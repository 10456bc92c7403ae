use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, UNIX_EPOCH},
};

use super::*;
use crate::{config::parse, state::State};

const MESH: &str = include_str!("../config/testdata/istio-local.yaml");

fn ephemeral() -> AdminConfig {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    AdminConfig {
        admin_address: loopback,
        metrics_address: loopback,
        readiness_address: loopback,
    }
}

fn sources() -> AdminSources {
    let state = State::from_config(parse(MESH, "mesh.yaml").unwrap()).unwrap();
    let certificate = |serial: &str, expires: u64| CertificateDetails {
        serial_number: serial.to_owned(),
        subject_alt_names: vec!["spiffe://cluster.local/ns/ns1/sa/sleep".to_owned()],
        valid_from: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        expiration_time: UNIX_EPOCH + Duration::from_secs(expires),
    };
    let certificates = move || {
        vec![CertificateSummary {
            identity: "spiffe://cluster.local/ns/ns1/sa/sleep".to_owned(),
            state: "Available".to_owned(),
            cert_chain: vec![certificate("0a1b", 1_798_761_599)],
            root_certs: vec![certificate("01", 2_000_000_000)],
        }]
    };
    AdminSources {
        state: StateHandle::new(state),
        metrics: Metrics::new(),
        readiness: Readiness::new(),
        certificates: Arc::new(certificates),
        reload: None,
        xds: None,
    }
}

/// One GET over a fresh connection; returns the status code and the body.
fn get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address)
        .unwrap_or_else(|error| panic!("cannot connect to {address}: {error}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn config_dump_shows_the_xds_stream_when_istiod_is_the_source() {
    use crate::xds::status::{Nack, TypeStatus, XdsStatus};
    let status = XdsStatus {
        address: "https://istiod.istio-system.svc:15012".into(),
        connected: true,
        connections: 2,
        last_error: None,
        types: [(
            crate::xds::ADDRESS_TYPE_URL.to_owned(),
            TypeStatus {
                resources: 3,
                last_version: "v7".into(),
                last_nonce: "9".into(),
                acks: 8,
                nacks: 1,
                last_nack: Some(Nack::now("9", "resource \"x\": cannot decode")),
            },
        )]
        .into(),
    };
    let (_updates, receiver) = tokio::sync::watch::channel(status);
    let mut with_xds = sources();
    with_xds.xds = Some(receiver);
    let servers = AdminServers::start(&ephemeral(), with_xds).unwrap();
    let (code, body) = get(servers.admin_address, "/config_dump");
    assert_eq!(code, 200, "{body}");
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    let address = &dump["xds"]["types"][crate::xds::ADDRESS_TYPE_URL];
    assert_eq!(address["lastVersion"], "v7", "{body}");
    assert_eq!(address["lastNonce"], "9");
    assert_eq!(
        address["lastNack"]["error"],
        "resource \"x\": cannot decode"
    );
    assert_eq!(dump["xds"]["connected"], true);
}

#[test]
fn config_dump_shows_the_state_and_certificate_expiry() {
    let servers = AdminServers::start(&ephemeral(), sources()).unwrap();
    let (status, body) = get(servers.admin_address, "/config_dump");
    assert_eq!(status, 200, "{body}");
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dump["workloads"].as_array().unwrap().len(), 5, "{body}");
    let sleep = dump["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|workload| workload["name"] == "sleep-5d8f")
        .unwrap();
    assert_eq!(sleep["workloadIps"][0], "198.18.1.10");
    assert_eq!(sleep["protocol"], "HBONE");
    assert_eq!(sleep["trustDomain"], "cluster.local");
    assert_eq!(dump["services"].as_array().unwrap().len(), 3);
    assert_eq!(
        dump["services"][0]["vips"][0], "/198.19.0.30",
        "services in namespace/hostname order"
    );
    assert_eq!(dump["policies"].as_array().unwrap().len(), 3);
    let certificate = &dump["certificates"][0];
    assert_eq!(
        certificate["identity"],
        "spiffe://cluster.local/ns/ns1/sa/sleep"
    );
    assert_eq!(
        certificate["certChain"][0]["expirationTime"],
        "2026-12-31T23:59:59Z"
    );
    assert!(
        !body.to_lowercase().contains("private"),
        "no key material: {body}"
    );
}

#[test]
fn metrics_are_served_in_prometheus_text() {
    let sources = sources();
    let metrics = sources.metrics.clone();
    let servers = AdminServers::start(&ephemeral(), sources).unwrap();
    metrics.connection_opened(&ConnectionLabels::new(Reporter::Source));
    let (status, body) = get(servers.metrics_address, "/metrics");
    assert_eq!(status, 200);
    assert!(
        body.contains("istio_tcp_connections_opened_total{reporter=\"source\""),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
}

#[test]
fn readiness_answers_200_only_when_the_daemon_is_ready() {
    let sources = sources();
    let readiness = sources.readiness.clone();
    let blocker = readiness.block("certificates");
    let servers = AdminServers::start(&ephemeral(), sources).unwrap();
    assert_eq!(get(servers.readiness_address, "/healthz/ready").0, 503);
    readiness.startup_complete();
    let (status, body) = get(servers.readiness_address, "/healthz/ready");
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready: waiting for: certificates\n")
    );
    blocker.release();
    assert_eq!(get(servers.readiness_address, "/healthz/ready").0, 200);
    readiness.set_draining();
    assert_eq!(get(servers.readiness_address, "/healthz/ready").0, 503);
}

#[test]
fn each_server_answers_only_its_own_paths() {
    let servers = AdminServers::start(&ephemeral(), sources()).unwrap();
    assert_eq!(get(servers.admin_address, "/metrics").0, 404);
    assert_eq!(get(servers.metrics_address, "/config_dump").0, 404);
    assert_eq!(get(servers.readiness_address, "/config_dump").0, 404);
}

#[test]
fn admin_must_stay_on_localhost() {
    let config = AdminConfig {
        admin_address: SocketAddr::from(([0, 0, 0, 0], 0)),
        ..ephemeral()
    };
    let error = AdminServers::start(&config, sources()).unwrap_err();
    assert!(error.to_string().contains("loopback"), "{error}");
}

#[test]
fn a_port_taken_by_another_program_is_reported_with_the_server_and_address() {
    // A plain listener, without SO_REUSEPORT: what any other program holding the port looks like.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = other.local_addr().unwrap();
    let config = AdminConfig {
        metrics_address: taken,
        ..ephemeral()
    };
    let error = AdminServers::start(&config, sources())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("metrics") && error.contains(&taken.to_string()),
        "{error}"
    );
}

#[test]
fn an_upgrades_new_daemon_can_bind_beside_the_old_one() {
    let old = AdminServers::start(&ephemeral(), sources()).unwrap();
    let config = AdminConfig {
        admin_address: old.admin_address,
        metrics_address: old.metrics_address,
        readiness_address: old.readiness_address,
    };
    let new = AdminServers::start(&config, sources()).unwrap();
    assert_eq!(new.metrics_address, old.metrics_address);
}

#[test]
fn stopping_releases_the_ports() {
    let servers = AdminServers::start(&ephemeral(), sources()).unwrap();
    let address = servers.admin_address;
    drop(servers);
    let again = AdminConfig {
        admin_address: address,
        ..ephemeral()
    };
    assert!(AdminServers::start(&again, sources()).is_ok());
}

#[test]
fn flags_default_to_istio_ports() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        admin: AdminArgs,
    }
    let defaults = Cli::try_parse_from(["ztunnel"]).unwrap();
    let config = AdminConfig::from(&defaults.admin);
    assert_eq!(config, AdminConfig::default());
    assert_eq!(
        config.admin_address,
        SocketAddr::from(([127, 0, 0, 1], 15000))
    );
    assert_eq!(config.metrics_address.port(), 15020);
    assert_eq!(config.readiness_address.port(), 15021);
    let custom = Cli::try_parse_from(["ztunnel", "--metrics-address", "127.0.0.1:0"]).unwrap();
    assert_eq!(
        AdminConfig::from(&custom.admin).metrics_address,
        SocketAddr::from(([127, 0, 0, 1], 0))
    );
}
