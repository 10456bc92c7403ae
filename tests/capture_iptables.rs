//! `ztunnel daemon --capture iptables`: the same proxy with capture done by nat REDIRECT rules in
//! each pod netns (the fallback for kernels without the eBPF hooks, and the benchmark baseline).
//! Two nodes, pods enrolled by the real CNI chain, real curl and nginx.

use std::process::Output;

use ztunnel_e2e::{
    apps::{Nginx, UnderlayCapture},
    cluster::{Cluster, ClusterPod},
};

/// host-local hands out .2, .3 in creation order on each node; `setup` checks it. `legacy` is
/// outside the mesh (protocol TCP): the CNI plugin leaves it alone, so its traffic is plaintext.
const MESH: &str = r#"
workloads:
- {uid: t//client, name: client, namespace: default, serviceAccount: client, workloadIps: ["198.18.1.2"], protocol: HBONE, node: node-1}
- {uid: t//legacy, name: legacy, namespace: default, serviceAccount: legacy, workloadIps: ["198.18.1.3"], protocol: TCP, node: node-1}
- {uid: t//web, name: web, namespace: default, serviceAccount: web, workloadIps: ["198.18.2.2"], protocol: HBONE, node: node-2}
"#;

const WEB_PAGE: &str = "served through iptables capture: secret-9d1e\n";

struct Mesh {
    client: ClusterPod,
    web: ClusterPod,
    legacy: ClusterPod,
    // Dropped last: pods (CNI DEL) go before the nodes and the underlay.
    cluster: Cluster,
}

fn setup(test: &str) -> anyhow::Result<Mesh> {
    let mut cluster = Cluster::new(test, 2, MESH)?;
    cluster
        .node_mut(1)
        .start_ztunnel(&["--capture", "iptables"])?;
    cluster
        .node_mut(2)
        .start_ztunnel(&["--capture", "iptables"])?;
    let client = cluster.pod(1, "default", "client")?;
    let legacy = cluster.pod(1, "default", "legacy")?;
    let web = cluster.pod(2, "default", "web")?;
    for (pod, expected) in [
        (&client, "198.18.1.2"),
        (&legacy, "198.18.1.3"),
        (&web, "198.18.2.2"),
    ] {
        anyhow::ensure!(
            pod.ip.to_string() == expected,
            "pod {} got {} from host-local, the mesh config says {expected}",
            pod.name,
            pod.ip
        );
    }
    Ok(Mesh {
        client,
        web,
        legacy,
        cluster,
    })
}

fn curl(mesh: &Mesh, from: &ClusterPod, to: &ClusterPod) -> anyhow::Result<Output> {
    let url = format!("http://{}/", to.ip);
    let output = mesh
        .cluster
        .run_in_pod(from, &["curl", "-sS", "--max-time", "10", &url])?;
    println!(
        "curl {} -> {url}: {}, body {:?}, stderr {:?}",
        from.name,
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(output)
}

/// `iptables -t nat -S` inside a pod's netns.
fn nat_rules(pod: &ClusterPod) -> anyhow::Result<String> {
    let output = std::process::Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", pod.netns()))
        .args(["iptables", "-w", "-t", "nat", "-S"])
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "iptables -t nat -S in pod {}: {}",
        pod.name,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn log_lines(mesh: &Mesh, node: u8, needle: &str) -> Vec<String> {
    mesh.cluster
        .node(node)
        .ztunnel_log()
        .lines()
        .filter(|line| line.contains(needle))
        .map(str::to_owned)
        .collect()
}

#[test]
fn iptables_capture_carries_http_across_nodes_only_in_hbone() -> anyhow::Result<()> {
    let mesh = setup("iptables_http")?;
    let nginx = Nginx::start(&mesh.cluster, &mesh.web, WEB_PAGE)?;
    let capture = UnderlayCapture::start(&mesh.cluster)?;
    let output = curl(&mesh, &mesh.client, &mesh.web)?;
    let pcap_path = capture.pcap.clone();
    let pcap = capture.finish()?;
    let all = UnderlayCapture::read(&pcap_path, "tcp")?;
    let not_hbone = UnderlayCapture::read(&pcap_path, "tcp and not port 15008")?;
    let clients = nginx.clients_after(1);
    // No getsockopt hook is attached under iptables capture: conntrack answers SO_ORIGINAL_DST.
    let captured = log_lines(&mesh, 1, "outbound connection captured");
    let access = log_lines(&mesh, 1, "ztunnel::access");
    println!(
        "underlay: {} TCP packets, {} not on port 15008: {:?}",
        all.len(),
        not_hbone.len(),
        not_hbone.iter().take(5).collect::<Vec<_>>()
    );
    println!("nginx saw clients {clients:?}");
    println!("node 1 capture log: {captured:?}\nnode 1 access log: {access:?}");

    assert!(output.status.success(), "curl from client to web failed");
    assert_eq!(String::from_utf8_lossy(&output.stdout), WEB_PAGE);
    assert!(
        !all.is_empty(),
        "the capture saw no packets: it proves nothing"
    );
    assert!(
        not_hbone.is_empty(),
        "TCP other than port 15008 crossed the underlay: {not_hbone:?}"
    );
    assert!(
        !pcap
            .windows(b"secret-9d1e".len())
            .any(|w| w == b"secret-9d1e"),
        "the page crossed the underlay in plaintext"
    );
    assert!(
        captured
            .iter()
            .any(|line| line.contains(&format!("{}:80", mesh.web.ip))),
        "node 1's outbound listener got web:80 from SO_ORIGINAL_DST (conntrack)"
    );
    assert_eq!(
        clients,
        vec![mesh.client.ip.to_string()],
        "nginx sees the client pod's real address"
    );
    assert!(
        access.iter().any(
            |line| line.contains("spiffe://cluster.local/ns/default/sa/web")
                && line.contains("mtls=true")
        ),
        "node 1 logged the tunnel to web's identity over mTLS"
    );
    Ok(())
}

#[test]
fn iptables_capture_redirects_plaintext_to_the_inbound_listener() -> anyhow::Result<()> {
    let mesh = setup("iptables_plain")?;
    let nginx = Nginx::start(&mesh.cluster, &mesh.web, WEB_PAGE)?;
    let output = curl(&mesh, &mesh.legacy, &mesh.web)?;
    let clients = nginx.clients_after(1);
    let inbound = log_lines(&mesh, 2, "inbound plaintext connection captured");
    // The access-log line is written when the connection has closed on both sides, which may
    // be a moment after curl has its answer.
    let legacy_ip = mesh.legacy.ip.to_string();
    let logged = mesh.cluster.node(2).wait_for_log(
        "the access-log line of the plaintext connection",
        0,
        &["ztunnel::access", "passthrough", &legacy_ip],
    );
    let access = log_lines(&mesh, 2, "ztunnel::access");
    println!("nginx in web saw clients {clients:?}");
    println!("node 2 inbound plaintext log: {inbound:?}\nnode 2 access log: {access:?}");

    assert!(output.status.success(), "curl from legacy to web failed");
    assert_eq!(String::from_utf8_lossy(&output.stdout), WEB_PAGE);
    assert!(
        inbound
            .iter()
            .any(|line| line.contains(&format!("original_destination={}:80", mesh.web.ip))),
        "node 2's 15006 listener got web:80 back from conntrack after the REDIRECT"
    );
    assert!(
        logged.is_ok(),
        "node 2 logged the plaintext connection from legacy: {logged:?}"
    );
    assert_eq!(
        clients,
        vec![mesh.legacy.ip.to_string()],
        "nginx sees the plaintext client's real address"
    );
    Ok(())
}

#[test]
fn iptables_rules_come_with_enrollment_and_go_with_unenrollment() -> anyhow::Result<()> {
    let mesh = setup("iptables_rules")?;
    let before = nat_rules(&mesh.client)?;
    let node = mesh.cluster.node(1);
    let cgroup = node.cgroup.display().to_string();
    let attached = node.run(&["bpftool", "cgroup", "show", &cgroup])?;
    let attached = String::from_utf8_lossy(&attached.stdout).into_owned();
    let ready = log_lines(&mesh, 1, "ztunnel daemon ready");
    node.ztunnel_cli(&["unenroll", "--name", "client", "--namespace", "default"])?;
    let after = nat_rules(&mesh.client)?;
    let web_rules = nat_rules(&mesh.web)?;
    println!("client nat rules when enrolled:\n{before}");
    println!("client nat rules after unenroll:\n{after}");
    println!("bpftool cgroup show {cgroup}: {attached:?}");
    println!("node 1 ready line: {ready:?}");

    assert!(
        ready.iter().any(|line| line.contains("capture=Iptables")),
        "the daemon says it captures with iptables"
    );
    for rule in [
        "-A OUTPUT -p tcp -j ZTUNNEL_OUTPUT",
        "-A PREROUTING -p tcp -j ZTUNNEL_PREROUTING",
        "-A ZTUNNEL_OUTPUT -m mark --mark 0x539 -j RETURN",
        "-A ZTUNNEL_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
        "-A ZTUNNEL_PREROUTING -p tcp -m tcp --dport 15008 -j RETURN",
        "-A ZTUNNEL_PREROUTING -p tcp -j REDIRECT --to-ports 15006",
    ] {
        assert!(before.contains(rule), "enrolled pod lacks {rule:?}");
    }
    assert!(
        attached.trim().is_empty(),
        "no eBPF program is attached to the node cgroup in iptables mode"
    );
    assert!(
        !after.contains("ZTUNNEL"),
        "unenroll left our rules behind: {after}"
    );
    assert!(
        web_rules.contains("ZTUNNEL_OUTPUT"),
        "another pod's rules were touched"
    );
    Ok(())
}
