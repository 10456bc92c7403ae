//! The bind guard: a process in an enrolled pod cannot bind ztunnel's in-pod ports (15001,
//! 15006, 15008) — not while ztunnel holds them, and not while ztunnel is down (the window in
//! which a squatter would receive the pod's captured traffic). Other ports, and pods outside the
//! mesh, bind as usual; ztunnel's own listeners (marked 0x539) still bind after a restart.

use ztunnel_e2e::{
    apps::{Nginx, listening},
    cluster::{Cluster, ClusterPod},
    kernel::cgroup_programs,
    wait::{DEFAULT_TIMEOUT, wait_until},
};

const MESH: &str = r#"
workloads:
- {uid: t//client, name: client, namespace: default, serviceAccount: client, workloadIps: ["198.18.1.2"], protocol: HBONE, node: node-1}
- {uid: t//web, name: web, namespace: default, serviceAccount: web, workloadIps: ["198.18.1.3"], protocol: HBONE, node: node-1}
- {uid: t//legacy, name: legacy, namespace: default, serviceAccount: legacy, workloadIps: ["198.18.1.4"], protocol: TCP, node: node-1}
"#;

const EPERM: &str = "error 1 ";
const PAGE: &str = "web page behind the bind guard\n";

/// Runs `bind-probe` in `pod` and returns `(address, outcome)` per line.
fn probe(
    cluster: &Cluster,
    pod: &ClusterPod,
    addresses: &[String],
) -> anyhow::Result<Vec<(String, String)>> {
    let mut argv = vec![env!("CARGO_BIN_EXE_bind-probe")];
    argv.extend(addresses.iter().map(String::as_str));
    let output = cluster.run_in_pod(pod, &argv)?;
    anyhow::ensure!(
        output.status.success(),
        "bind-probe in {} failed: {}",
        pod.name,
        String::from_utf8_lossy(&output.stderr)
    );
    let outcomes: Vec<(String, String)> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(address, outcome)| (address.to_owned(), format!("{outcome} ")))
        .collect();
    println!("bind-probe in {} ({}): {outcomes:?}", pod.name, pod.ip);
    Ok(outcomes)
}

fn curl(cluster: &Cluster, from: &ClusterPod, to: &ClusterPod) -> anyhow::Result<String> {
    let url = format!("http://{}/", to.ip);
    let output = cluster.run_in_pod(from, &["curl", "-sS", "--max-time", "10", &url])?;
    println!(
        "curl {} -> {url}: {}, body {:?}, stderr {:?}",
        from.name,
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn pods_cannot_bind_ztunnel_ports_and_ztunnel_listeners_keep_working() -> anyhow::Result<()> {
    let mut cluster = Cluster::new("guard_bind", 1, MESH)?;
    cluster.node_mut(1).start_ztunnel(&[])?;
    let client = cluster.pod(1, "default", "client")?;
    let web = cluster.pod(1, "default", "web")?;
    let legacy = cluster.pod(1, "default", "legacy")?;
    for (pod, expected) in [
        (&client, "198.18.1.2"),
        (&web, "198.18.1.3"),
        (&legacy, "198.18.1.4"),
    ] {
        anyhow::ensure!(
            pod.ip.to_string() == expected,
            "pod {} got {}, config says {expected}",
            pod.name,
            pod.ip
        );
    }
    let _nginx = Nginx::start(&cluster, &web, PAGE)?;
    let before = curl(&cluster, &client, &web)?;

    let guarded: Vec<String> = vec![
        "0.0.0.0:15001".into(),
        "127.0.0.1:15001".into(),
        "0.0.0.0:15006".into(),
        "0.0.0.0:15008".into(),
        format!("{}:15008", client.ip),
        "[::]:15001".into(),
        "[::]:15008".into(),
    ];
    let mut all = guarded.clone();
    all.push("0.0.0.0:8080".into());
    let while_up = probe(&cluster, &client, &all)?;

    // The window that matters: ztunnel is gone, its listeners are closed, capture stays pinned.
    cluster.node_mut(1).kill_ztunnel()?;
    wait_until(
        "ztunnel's in-pod listener to close",
        DEFAULT_TIMEOUT,
        || (!listening(client.netns(), "127.0.0.1:15001")).then_some(()),
    )?;
    let while_down = probe(&cluster, &client, &guarded)?;
    let outside_mesh = probe(
        &cluster,
        &legacy,
        &["0.0.0.0:15001".into(), "0.0.0.0:15008".into()],
    )?;

    cluster.node_mut(1).start_ztunnel(&[])?;
    wait_until(
        "ztunnel to listen in the client pod again",
        DEFAULT_TIMEOUT,
        || listening(client.netns(), "127.0.0.1:15001").then_some(()),
    )?;
    let after = curl(&cluster, &client, &web)?;
    let hooks = cgroup_programs(&cluster.node(1).cgroup)?;
    let bind_hooks: Vec<&(String, String)> = hooks
        .iter()
        .filter(|(hook, _)| hook.contains("bind"))
        .collect();
    let refusals: Vec<String> = cluster
        .node(1)
        .ztunnel_log()
        .lines()
        .filter(|line| line.contains("refused a pod process binding"))
        .map(str::to_owned)
        .collect();
    println!("bind hooks on the node cgroup: {bind_hooks:?}\nkernel log refusals: {refusals:#?}");

    assert_eq!(
        before, PAGE,
        "the captured connection works before the probes"
    );
    for (address, outcome) in &while_up {
        if address == "0.0.0.0:8080" {
            assert_eq!(outcome, "ok ", "an ordinary port binds in an enrolled pod");
        } else {
            assert!(
                outcome.starts_with(EPERM),
                "bind {address} while ztunnel is up: {outcome} (want EPERM)"
            );
        }
    }
    assert_eq!(
        while_down.len(),
        guarded.len(),
        "every guarded address was probed while ztunnel was down"
    );
    for (address, outcome) in &while_down {
        assert!(
            outcome.starts_with(EPERM),
            "bind {address} while ztunnel is down: {outcome} (want EPERM)"
        );
    }
    assert!(
        outside_mesh.iter().all(|(_, outcome)| outcome == "ok "),
        "a pod outside the mesh binds 15001 and 15008: {outside_mesh:?}"
    );
    assert_eq!(
        after, PAGE,
        "ztunnel's listeners bound again after the restart and capture works"
    );
    let mut bind_hooks: Vec<(String, String)> = bind_hooks.into_iter().cloned().collect();
    bind_hooks.sort();
    assert_eq!(
        bind_hooks,
        vec![
            ("cgroup_inet4_bind".to_owned(), "bind4".to_owned()),
            ("cgroup_inet6_bind".to_owned(), "bind6".to_owned())
        ],
        "exactly one bind4 and one bind6 program after a restart"
    );
    Ok(())
}
