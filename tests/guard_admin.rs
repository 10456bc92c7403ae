//! What a pod can reach of ztunnel's operations surface, and what it shows. The admin server
//! (`/config_dump`) listens on 127.0.0.1 of the node's netns: a pod reaches it neither on its own
//! loopback nor through the node's addresses. `/metrics`, `/healthz/ready` and `/config_dump`
//! expose no private key: not the workload keys ztunnel was given as files (`--cert-dir`), not
//! the mesh root key (`--ca-dir`), and nothing shaped like a PEM private key; `/config_dump`
//! does show each workload certificate (identity, serial, expiry).

use std::path::Path;

use anyhow::Context;
use ztunnel_e2e::{
    apps::Nginx,
    cluster::{Cluster, ClusterPod},
    env::checked,
    ztunnel::binary,
};

const MESH: &str = r#"
workloads:
- {uid: t//client, name: client, namespace: default, serviceAccount: client, workloadIps: ["198.18.1.2"], protocol: HBONE, node: node-1}
- {uid: t//web, name: web, namespace: default, serviceAccount: web, workloadIps: ["198.18.2.2"], protocol: HBONE, node: node-2}
"#;

const PAGE: &str = "web page for the admin test\n";

/// The base64 body of a PEM file, without its armour lines and line breaks.
fn pem_body(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    anyhow::ensure!(
        text.contains("PRIVATE KEY"),
        "{} is not a PEM private key",
        path.display()
    );
    Ok(text
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect())
}

/// Every 24-character window of `body` that appears in `text` once line breaks, escaped line
/// breaks and whitespace are removed from it (24 base64 characters are 18 bytes of key).
fn leaked_windows(text: &str, body: &str) -> Vec<String> {
    let flat: String = text.replace("\\n", "").split_whitespace().collect();
    let bytes = body.as_bytes();
    (0..bytes.len().saturating_sub(24))
        .step_by(12)
        .map(|start| &body[start..start + 24])
        .filter(|window| flat.contains(window))
        .map(str::to_owned)
        .collect()
}

fn fetch(output: std::process::Output, what: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        output.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn curl_from_pod(
    cluster: &Cluster,
    pod: &ClusterPod,
    url: &str,
) -> anyhow::Result<std::process::Output> {
    let output = cluster.run_in_pod(pod, &["curl", "-sS", "--max-time", "5", url])?;
    println!(
        "pod {} curl {url}: {}, {} bytes, stderr {:?}",
        pod.name,
        output.status,
        output.stdout.len(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(output)
}

/// The leaf's serial as `/config_dump` writes it (lowercase hex, no separators).
fn serial(cert: &Path) -> anyhow::Result<String> {
    let text = checked(
        std::process::Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(cert),
    )?;
    let hex = text
        .trim()
        .strip_prefix("serial=")
        .with_context(|| format!("openssl said {text:?}"))?;
    Ok(hex.to_ascii_lowercase())
}

#[test]
fn pods_cannot_reach_admin_and_no_endpoint_shows_a_private_key() -> anyhow::Result<()> {
    let mut cluster = Cluster::new("guard_admin", 2, MESH)?;
    // Node 1 is given workload certificates and keys as files; node 2 holds the mesh root key.
    let cert_dir = cluster.env.scratch.join("n1-certs");
    let ca_dir = cluster.node(1).ca_dir.clone();
    for account in ["client", "web"] {
        checked(
            std::process::Command::new(binary()?)
                .args(["ca", "issue"])
                .arg(&ca_dir)
                .arg(format!("spiffe://cluster.local/ns/default/sa/{account}"))
                .arg(&cert_dir),
        )?;
    }
    let cert_dir_arg = cert_dir.display().to_string();
    cluster
        .node_mut(1)
        .start_ztunnel(&["--cert-dir", &cert_dir_arg])?;
    cluster.node_mut(2).start_ztunnel(&[])?;
    let client = cluster.pod(1, "default", "client")?;
    let web = cluster.pod(2, "default", "web")?;
    let _nginx = Nginx::start(&cluster, &web, PAGE)?;
    let through_mesh = curl_from_pod(&cluster, &client, &format!("http://{}/", web.ip))?;

    let mut keys = vec![("root key", pem_body(&ca_dir.join("root-key.pem"))?)];
    for account in ["client", "web"] {
        keys.push((
            account,
            pem_body(&cert_dir.join("default").join(account).join("key.pem"))?,
        ));
    }
    // The detector finds a key in its own file (armour, line breaks and all).
    let client_key_file = std::fs::read_to_string(cert_dir.join("default/client/key.pem"))?;
    let self_check = leaked_windows(&client_key_file, &keys[1].1).len();
    let client_serial = serial(&cert_dir.join("default/client/cert-chain.pem"))?;

    // The admin server is up (the node's own loopback reaches it) ...
    let node_dump = fetch(
        cluster.node(1).run(&[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "http://127.0.0.1:15000/config_dump",
        ])?,
        "node 1 /config_dump",
    )?;
    // ... and no pod reaches it: not on the pod's loopback, not on the node's addresses.
    let gateway = format!("198.18.{}.1", client.node);
    let underlay = cluster.node(1).underlay_ip.to_string();
    let mut from_pod = Vec::new();
    for host in ["127.0.0.1", gateway.as_str(), underlay.as_str()] {
        let output = curl_from_pod(
            &cluster,
            &client,
            &format!("http://{host}:15000/config_dump"),
        )?;
        from_pod.push((host.to_owned(), output));
    }
    // Metrics and readiness are meant to be reachable (Prometheus, kubelet): read them as a pod does.
    let pod_metrics = fetch(
        curl_from_pod(
            &cluster,
            &client,
            &format!("http://{underlay}:15020/metrics"),
        )?,
        "metrics from the pod",
    )?;
    let pod_ready = fetch(
        curl_from_pod(
            &cluster,
            &client,
            &format!("http://{underlay}:15021/healthz/ready"),
        )?,
        "readiness from the pod",
    )?;
    let mut documents = vec![
        ("node 1 /config_dump".to_owned(), node_dump.clone()),
        ("node 1 /metrics from a pod".to_owned(), pod_metrics),
        ("node 1 /healthz/ready from a pod".to_owned(), pod_ready),
    ];
    for node in [1u8, 2] {
        for (path, port) in [
            ("/config_dump", 15000),
            ("/metrics", 15020),
            ("/healthz/ready", 15021),
        ] {
            let url = format!("http://127.0.0.1:{port}{path}");
            let text = fetch(
                cluster
                    .node(node)
                    .run(&["curl", "-sS", "--max-time", "5", &url])?,
                &url,
            )?;
            documents.push((format!("node {node} {path}"), text));
        }
        documents.push((format!("node {node} log"), cluster.node(node).ztunnel_log()));
    }

    let dump: serde_json::Value =
        serde_json::from_str(&node_dump).context("node 1 /config_dump is not JSON")?;
    let certificates = dump["certificates"].as_array().cloned().unwrap_or_default();
    let client_certificate = certificates
        .iter()
        .find(|entry| entry["identity"] == "spiffe://cluster.local/ns/default/sa/client");
    println!(
        "node 1 /config_dump certificates: {}",
        serde_json::to_string_pretty(&certificates)?
    );
    println!("client certificate serial (openssl): {client_serial}");
    let mut leaks = Vec::new();
    for (name, text) in &documents {
        if text.contains("PRIVATE KEY") {
            leaks.push(format!("{name} contains a PEM private key marker"));
        }
        for (key, body) in &keys {
            let windows = leaked_windows(text, body);
            if !windows.is_empty() {
                leaks.push(format!(
                    "{name} contains {} pieces of the {key}: {:?}",
                    windows.len(),
                    &windows[..windows.len().min(3)]
                ));
            }
        }
        println!("checked {name}: {} bytes", text.len());
    }
    println!(
        "leaks: {leaks:#?} (the detector finds {self_check} windows of the client key in its own file)"
    );

    assert_eq!(
        through_mesh.stdout,
        PAGE.as_bytes(),
        "the mesh works with file-given certificates"
    );
    for (host, output) in &from_pod {
        assert!(
            !output.status.success() && output.stdout.is_empty(),
            "a pod reached the admin server at {host}:15000"
        );
    }
    let client_certificate =
        client_certificate.context("node 1 /config_dump lists the client's certificate")?;
    let leaf = &client_certificate["certChain"][0];
    assert_eq!(
        leaf["serialNumber"].as_str().map(str::to_ascii_lowercase),
        Some(client_serial),
        "/config_dump shows the serial of the certificate file node 1 was given"
    );
    assert!(
        leaf["expirationTime"]
            .as_str()
            .is_some_and(|time| time.ends_with('Z')),
        "and its expiry"
    );
    assert!(
        leaks.is_empty(),
        "private key material is exposed: {leaks:#?}"
    );
    Ok(())
}
