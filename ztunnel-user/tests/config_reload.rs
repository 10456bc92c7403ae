//! Must-show (e): a configuration change takes effect without a restart; a broken file is
//! rejected and the old state keeps serving; an unsupported field is named. Observed the way an
//! operator would: through authorization decisions, `/config_dump` and `/metrics`.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use ztunnel::{
    admin::{AdminConfig, AdminServers, AdminSources, Metrics, Readiness, no_certificates},
    authz::{Authorizer, ConnectionAttributes, Decision, DenyReason},
    config::{ReloadOutcome, Reloader},
    state::StateHandle,
};

const ALLOW_ALL: &str = "\
workloads:
- {uid: echo, name: echo, namespace: ns2, serviceAccount: echo, workloadIps: [198.18.2.10], protocol: HBONE}
";

const DENY_SLEEP: &str = "\
workloads:
- {uid: echo, name: echo, namespace: ns2, serviceAccount: echo, workloadIps: [198.18.2.10], protocol: HBONE}
policies:
- name: no-sleep
  namespace: ns2
  scope: Namespace
  action: Deny
  rules:
  - - - principals: [!Suffix /sa/sleep]
";

const UNSUPPORTED: &str = "\
workloads:
- uid: echo
  name: echo
  namespace: ns2
  workloadIps: [198.18.2.10]
  applicationTunnel: {protocol: PROXY}
";

fn write_atomically(path: &Path, text: &str) {
    let staging = path.with_extension("staging");
    std::fs::write(&staging, text).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

fn get(address: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
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
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

fn sleep_to_echo(state: &StateHandle) -> ConnectionAttributes {
    ConnectionAttributes {
        source_identity: Some("spiffe://cluster.local/ns/ns1/sa/sleep".parse().unwrap()),
        source: "198.18.1.10:40000".parse().unwrap(),
        destination_workload: state
            .snapshot()
            .workload_by_ip("198.18.2.10".parse().unwrap())
            .unwrap(),
        destination: "198.18.2.10:8080".parse().unwrap(),
    }
}

/// Waits for reload attempt `attempt` to be published, failing with what was awaited.
async fn reload_attempt(
    updates: &mut tokio::sync::watch::Receiver<ReloadOutcome>,
    attempt: u64,
) -> ReloadOutcome {
    let seen = tokio::time::timeout(
        Duration::from_secs(10),
        updates.wait_for(|outcome| outcome.attempt >= attempt),
    )
    .await
    .unwrap_or_else(|_| panic!("reload attempt {attempt} not published within 10 s"))
    .unwrap();
    seen.clone()
}

#[tokio::test]
async fn config_changes_apply_live_and_broken_files_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("ztunnel.yaml");
    write_atomically(&path, ALLOW_ALL);

    let metrics = Metrics::new();
    let reloader = Reloader::start(&path)
        .unwrap()
        .with_metrics(metrics.clone());
    let state = reloader.state();
    let mut updates = reloader.subscribe();
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let servers = AdminServers::start(
        &AdminConfig {
            admin_address: loopback,
            metrics_address: loopback,
            readiness_address: loopback,
        },
        AdminSources {
            state: state.clone(),
            metrics: metrics.clone(),
            readiness: Readiness::new(),
            certificates: no_certificates(),
            reload: Some(reloader.subscribe()),
            xds: None,
        },
    )
    .unwrap();
    let watcher = tokio::spawn(reloader.run(Duration::from_millis(20)));
    let authorizer = Authorizer::new(state.clone());
    println!(
        "serving {} with admin on {}",
        path.display(),
        servers.admin_address
    );

    assert_eq!(
        authorizer.evaluate(&sleep_to_echo(&state)),
        Decision::Allow,
        "no policy yet"
    );

    write_atomically(&path, DENY_SLEEP);
    let applied = reload_attempt(&mut updates, 1).await;
    println!("after adding a DENY policy: {applied:?}");
    assert_eq!(
        applied.result.as_deref(),
        Ok("1 workloads, 0 services, 1 policies")
    );
    assert_eq!(
        authorizer.evaluate(&sleep_to_echo(&state)),
        Decision::Deny(DenyReason::DeniedBy {
            policy: "ns2/no-sleep".into()
        }),
        "the new policy applies without a restart"
    );

    write_atomically(&path, UNSUPPORTED);
    let rejected = reload_attempt(&mut updates, 2).await;
    println!("after an unsupported field: {rejected:?}");
    let message = rejected.result.unwrap_err();
    assert!(
        message.contains("`applicationTunnel`") && message.contains("line 6"),
        "{message}"
    );
    assert!(
        !authorizer.evaluate(&sleep_to_echo(&state)).is_allowed(),
        "the last good configuration (with the DENY policy) stays in force"
    );

    let dump: serde_json::Value =
        serde_json::from_str(&get(servers.admin_address, "/config_dump")).unwrap();
    println!("config_dump lastReload: {}", dump["lastReload"]);
    assert_eq!(dump["policies"][0]["name"], "no-sleep");
    assert_eq!(dump["lastReload"]["applied"], false);
    assert!(
        dump["lastReload"]["message"]
            .as_str()
            .unwrap()
            .contains("applicationTunnel")
    );
    let exposition = get(servers.metrics_address, "/metrics");
    assert!(
        exposition.contains("ztunnel_config_reloads_total{result=\"applied\"} 1"),
        "{exposition}"
    );
    assert!(
        exposition.contains("ztunnel_config_reloads_total{result=\"rejected\"} 1"),
        "{exposition}"
    );

    write_atomically(&path, ALLOW_ALL);
    assert!(reload_attempt(&mut updates, 3).await.result.is_ok());
    assert_eq!(
        authorizer.evaluate(&sleep_to_echo(&state)),
        Decision::Allow,
        "fixed file applies"
    );
    watcher.abort();
    drop(servers);
}
