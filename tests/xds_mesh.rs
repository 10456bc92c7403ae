//! Two nodes whose ztunnels learn workloads, services and policies only from a control plane
//! over delta xDS (no `--config`): the test control plane (`ztunnel_e2e::control_plane`) plays
//! istiod, with TLS from the mesh root and a bearer token, and pushes by fixture changes.

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use ztunnel_e2e::{
    cluster::{Cluster, ClusterPod},
    control_plane::ControlPlane,
    server::HttpServer,
    wait::wait_until,
};

const ADDRESS_TYPE: &str = "type.googleapis.com/istio.workload.Address";
const CLIENT: &str = "- {uid: t//client, name: client, namespace: default, serviceAccount: client, workloadIps: [\"198.18.1.2\"], protocol: HBONE, node: node-1}\n";
const WEB: &str = "- {uid: t//web, name: web, namespace: default, serviceAccount: web, workloadIps: [\"198.18.2.2\"], protocol: HBONE, node: node-2}\n";
const WEB_V2: &str = "- {uid: t//web, name: web, namespace: default, serviceAccount: web, workloadIps: [\"198.18.2.2\"], protocol: HBONE, node: node-2, canonicalName: web-v2}\n";
const LATE: &str = "- {uid: t//late, name: late, namespace: default, serviceAccount: late, workloadIps: [\"198.18.2.3\"], protocol: HBONE, node: node-2}\n";
const DENY_CLIENT: &str = "policies:\n- {name: deny-client, namespace: default, scope: Namespace, action: Deny, rules: [[[{principals: [{Exact: cluster.local/ns/default/sa/client}]}]]]}\n";

/// Starts both ztunnels on `control_plane` and waits until each has applied its first push.
fn start_xds_ztunnels(cluster: &mut Cluster, control_plane: &ControlPlane) -> anyhow::Result<()> {
    for node in [1, 2] {
        let flags = control_plane.ztunnel_flags(node);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        cluster.node_mut(node).start_ztunnel(&flags)?;
        let line = cluster.node(node).wait_for_log(
            "the first xDS push to be applied",
            0,
            &["startup task ready", "first xDS push applied"],
        )?;
        println!("node {node}: {line}");
    }
    Ok(())
}

fn curl(cluster: &Cluster, from: &ClusterPod, url: &str) -> anyhow::Result<(bool, String)> {
    let output = cluster.run_in_pod(from, &["curl", "-sS", "--max-time", "10", url])?;
    let body = String::from_utf8_lossy(&output.stdout).into_owned();
    println!(
        "curl {} -> {url}: {}, body {body:?}, stderr {:?}",
        from.name,
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok((output.status.success(), body))
}

fn config_dump(cluster: &Cluster, node: u8) -> anyhow::Result<Value> {
    let output = cluster.node(node).run(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "http://127.0.0.1:15000/config_dump",
    ])?;
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// Waits until node `node`'s `/config_dump` satisfies `check`; returns that dump.
fn wait_for_dump(
    cluster: &Cluster,
    node: u8,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    wait_until(
        &format!("node {node} /config_dump: {what}"),
        Duration::from_secs(30),
        || config_dump(cluster, node).ok().filter(|dump| check(dump)),
    )
}

fn workload<'a>(dump: &'a Value, uid: &str) -> Option<&'a Value> {
    dump["workloads"]
        .as_array()?
        .iter()
        .find(|workload| workload["uid"] == uid)
}

#[test]
fn xds_fed_nodes_route_apply_pushes_nack_bad_resources_and_survive_a_control_plane_restart()
-> anyhow::Result<()> {
    let test = "xds_lifecycle";
    // The CNI plugin still reads the file to tell mesh pods apart; the ztunnels never do.
    let cni_view = format!("workloads:\n{CLIENT}{WEB}{LATE}");
    let mut cluster = Cluster::new(test, 2, &cni_view)?;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_xds-control-plane"));
    let mut control_plane =
        ControlPlane::start(&cluster, binary, &format!("workloads:\n{CLIENT}{WEB}"))?;
    start_xds_ztunnels(&mut cluster, &control_plane)?;
    let subscribed = control_plane.wait_for_log(
        "node 1 to subscribe",
        0,
        &[
            "SUBSCRIBE",
            ADDRESS_TYPE,
            "node_id=ztunnel~198.18.0.1~ztunnel-1.istio-system~istio-system.svc.cluster.local",
            "clusterid=test-cluster",
        ],
    )?;
    println!("control plane saw: {subscribed}");
    let client = cluster.pod(1, "default", "client")?;
    let web = cluster.pod(2, "default", "web")?;
    let late = cluster.pod(2, "default", "late")?;
    let _web_server = HttpServer::start(web.netns(), SocketAddr::new(web.ip.into(), 8080), "web")?;
    let _late_server =
        HttpServer::start(late.netns(), SocketAddr::new(late.ip.into(), 8080), "late")?;
    let web_url = format!("http://{}:8080/", web.ip);
    let late_url = format!("http://{}:8080/", late.ip);

    // 1. Cross-node traffic on the state pushed at start.
    let (web_ok, web_body) = curl(&cluster, &client, &web_url)?;

    // 2. A pod added by a push becomes a mesh destination (HBONE, its identity checked).
    let offset = control_plane.log_len();
    control_plane.push(&format!("workloads:\n{CLIENT}{WEB}{LATE}"))?;
    control_plane.wait_for_log("node ACKs of the push", offset, &["ACK", ADDRESS_TYPE])?;
    // Both ends must know it: node 2 serves its inbound side.
    for node in [1, 2] {
        wait_for_dump(&cluster, node, "late is known", |dump| {
            workload(dump, "t//late").is_some()
        })?;
    }
    let (late_ok, late_body) = curl(&cluster, &client, &late_url)?;
    let late_tunnel = cluster.node(1).wait_for_log(
        "the access-log line of the tunnel to late",
        0,
        &[
            "connection closed",
            "dst_identity=spiffe://cluster.local/ns/default/sa/late",
            "mtls=true",
        ],
    )?;
    println!("node 1 access log: {late_tunnel}");

    // 3. A malformed resource is NACKed; the rest of the push applies.
    let offset = control_plane.log_len();
    control_plane.push(&format!(
        "workloads:\n{CLIENT}{WEB_V2}{LATE}malformed: [t//broken]\n"
    ))?;
    let nack =
        control_plane.wait_for_log("a NACK", offset, &["NACK", ADDRESS_TYPE, "t//broken"])?;
    println!("control plane saw: {nack}");
    let dump = wait_for_dump(&cluster, 1, "web's new canonical name", |dump| {
        workload(dump, "t//web").is_some_and(|web| web["canonicalName"] == "web-v2")
    })?;
    let last_nack = dump["xds"]["types"][ADDRESS_TYPE]["lastNack"].clone();
    println!("node 1 config_dump xds: {}", dump["xds"]);

    // 4. The control plane dies: traffic continues on the last state.
    control_plane.kill()?;
    let (during_outage_ok, during_outage_body) = curl(&cluster, &client, &web_url)?;
    // 5. A change made while it was away applies once it is back: a DENY of the client.
    control_plane.push(&format!("workloads:\n{CLIENT}{WEB_V2}{LATE}{DENY_CLIENT}"))?;
    control_plane.restart()?;
    let dump = wait_for_dump(&cluster, 2, "the DENY policy after the restart", |dump| {
        dump["policies"].as_array().is_some_and(|policies| {
            policies
                .iter()
                .any(|policy| policy["name"] == "deny-client")
        })
    })?;
    println!(
        "node 2 after the restart: {} connections, xds {}",
        dump["xds"]["connections"], dump["xds"]
    );
    let (denied_ok, _) = curl(&cluster, &client, &web_url)?;

    assert!(
        web_ok && web_body.starts_with("web"),
        "cross-node curl on xDS state failed"
    );
    assert!(
        late_ok && late_body.starts_with("late"),
        "the pod added by a push is not reachable"
    );
    assert!(
        last_nack["error"]
            .as_str()
            .is_some_and(|error| error.contains("t//broken")),
        "config_dump shows no NACK naming the malformed resource: {last_nack}"
    );
    assert!(
        during_outage_ok && during_outage_body.starts_with("web"),
        "traffic stopped while the control plane was away"
    );
    assert!(
        dump["xds"]["connections"]
            .as_u64()
            .is_some_and(|count| count >= 2),
        "node 2 did not reconnect"
    );
    assert!(
        !denied_ok,
        "the DENY pushed after the restart was not enforced"
    );
    Ok(())
}

const SERVICE_CLIENT: &str = "- {uid: t//client, name: client, namespace: default, serviceAccount: client, workloadIps: [\"198.18.1.2\", \"2001:db8:1::2\"], protocol: HBONE, node: node-1}\n";
const ENDPOINT_A: &str = "- {uid: t//ep-a, name: ep-a, namespace: default, serviceAccount: echo, workloadIps: [\"198.18.2.2\", \"2001:db8:2::2\"], protocol: HBONE, node: node-2, services: {\"default/echo.default.svc.cluster.local\": {80: 8080}}}\n";
const ENDPOINT_B: &str = "- {uid: t//ep-b, name: ep-b, namespace: default, serviceAccount: echo, workloadIps: [\"198.18.2.3\", \"2001:db8:2::3\"], protocol: HBONE, node: node-2, services: {\"default/echo.default.svc.cluster.local\": {80: 8080}}}\n";
const ENDPOINT_B_GONE: &str = "- {uid: t//ep-b, name: ep-b, namespace: default, serviceAccount: echo, workloadIps: [\"198.18.2.3\", \"2001:db8:2::3\"], protocol: HBONE, node: node-2}\n";
const ECHO_SERVICE: &str = "services:\n- {name: echo, namespace: default, hostname: echo.default.svc.cluster.local, vips: [\"/198.18.200.1\", \"/2001:db8:200::1\"], ports: {80: 8080}}\n";

/// Which servers answered `count` requests to `url` (the first word of each answer).
fn answers(
    cluster: &Cluster,
    client: &ClusterPod,
    url: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let mut seen = Vec::new();
    for _ in 0..count {
        let (ok, body) = curl(cluster, client, url)?;
        seen.push(if ok {
            body.split_whitespace().next().unwrap_or("empty").to_owned()
        } else {
            "failed".to_owned()
        });
    }
    Ok(seen)
}

#[test]
fn a_service_vip_reaches_every_endpoint_on_another_node_in_the_vips_family_until_one_is_removed()
-> anyhow::Result<()> {
    let test = "xds_services";
    let fixture = format!("workloads:\n{SERVICE_CLIENT}{ENDPOINT_A}{ENDPOINT_B}{ECHO_SERVICE}");
    let mut cluster = Cluster::new_dual_stack(test, 2, &fixture)?;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_xds-control-plane"));
    let control_plane = ControlPlane::start(&cluster, binary, &fixture)?;
    start_xds_ztunnels(&mut cluster, &control_plane)?;
    let client = cluster.pod(1, "default", "client")?;
    let endpoint_a = cluster.pod(2, "default", "ep-a")?;
    let endpoint_b = cluster.pod(2, "default", "ep-b")?;
    // One server per family on each endpoint: the answer tells which address was dialled.
    let mut servers = Vec::new();
    for (pod, name) in [(&endpoint_a, "a"), (&endpoint_b, "b")] {
        let v6 = pod
            .ipv6
            .ok_or_else(|| anyhow::anyhow!("{} has no IPv6", pod.name))?;
        servers.push(HttpServer::start(
            pod.netns(),
            SocketAddr::new(pod.ip.into(), 8080),
            &format!("{name}-v4"),
        )?);
        servers.push(HttpServer::start(
            pod.netns(),
            SocketAddr::new(v6.into(), 8080),
            &format!("{name}-v6"),
        )?);
    }

    let over_v4 = answers(&cluster, &client, "http://198.18.200.1/", 4)?;
    let over_v6 = answers(&cluster, &client, "http://[2001:db8:200::1]/", 4)?;
    let tunnel = cluster.node(1).wait_for_log(
        "the access-log line of a tunnel to the VIP",
        0,
        &["connection closed", "dst=198.18.200.1:80", "mtls=true"],
    )?;
    println!("node 1 access log: {tunnel}");

    let offset = control_plane.log_len();
    control_plane.push(&format!(
        "workloads:\n{SERVICE_CLIENT}{ENDPOINT_A}{ENDPOINT_B_GONE}{ECHO_SERVICE}"
    ))?;
    control_plane.wait_for_log("node ACKs of the push", offset, &["ACK", ADDRESS_TYPE])?;
    let dump = wait_for_dump(&cluster, 1, "ep-b no longer an endpoint", |dump| {
        dump["services"].as_array().is_some_and(|services| {
            services.iter().any(|service| {
                service["hostname"] == "echo.default.svc.cluster.local"
                    && service["endpoints"].get("t//ep-b").is_none()
                    && service["endpoints"].get("t//ep-a").is_some()
            })
        })
    })?;
    println!("node 1 services after the push: {}", dump["services"]);
    let after_removal = answers(&cluster, &client, "http://198.18.200.1/", 4)?;

    println!(
        "over the IPv4 VIP: {over_v4:?}; over the IPv6 VIP: {over_v6:?}; after removing ep-b: {after_removal:?}"
    );
    for (seen, family) in [(&over_v4, "v4"), (&over_v6, "v6")] {
        for endpoint in ["a", "b"] {
            assert!(
                seen.contains(&format!("{endpoint}-{family}")),
                "endpoint {endpoint} was never reached in {family} through the VIP: {seen:?}"
            );
        }
        assert!(
            seen.iter().all(|answer| answer.ends_with(family)),
            "a request to the {family} VIP was answered by something else: {seen:?}"
        );
    }
    assert!(
        tunnel.contains("via=198.18.2.2:15008") || tunnel.contains("via=198.18.2.3:15008"),
        "the VIP was not tunnelled to an endpoint's HBONE port: {tunnel}"
    );
    assert!(
        after_removal.iter().all(|answer| answer == "a-v4"),
        "the removed endpoint was still chosen: {after_removal:?}"
    );
    Ok(())
}
