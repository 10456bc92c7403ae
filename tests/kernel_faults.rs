//! Kernel and CNI faults: what ztunnel does when the kernel side is not as it expects.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use ztunnel::ebpf::{
    bpf_syscall::{self, CgroupAttachType},
    loader::CGROUP_PROGRAMS,
};
use ztunnel_e2e::{
    TestEnv,
    cluster::{Cluster, ClusterNode, ClusterPod},
    cni_runtime::PluginFailure,
    env::checked,
    kernel::{
        ATTACH_CGROUP_INET4_CONNECT, PROG_TYPE_CGROUP_SOCK_ADDR, PROG_TYPE_SCHED_CLS,
        cgroup_programs, create_hash_map, load_trivial_program, program_id, tcx_ingress_programs,
    },
    server::HttpServer,
    ztunnel::daemon_until_exit,
};

/// How long a daemon that cannot use its bpffs root may take to give up (generous: CI is slow;
/// the figure printed is what matters).
const REFUSAL_DEADLINE: Duration = Duration::from_secs(30);

/// A bpffs mounted by the test (then remounted read-only); unmounted on drop.
struct ReadOnlyBpffs {
    path: PathBuf,
}

impl ReadOnlyBpffs {
    fn mount(path: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&path)?;
        checked(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&path))?;
        let mount = Self { path };
        checked(
            Command::new("mount")
                .args(["-o", "remount,ro"])
                .arg(&mount.path),
        )?;
        Ok(mount)
    }
}

impl Drop for ReadOnlyBpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[test]
fn a_bpffs_root_that_is_not_a_writable_bpffs_stops_the_daemon_with_a_clear_message()
-> anyhow::Result<()> {
    let env = TestEnv::new("kernel_faults_bpffs")?;
    let plain = env.scratch.join("plain-dir");
    std::fs::create_dir_all(&plain)?;
    let plain_root = plain.join("ztunnel");
    let not_bpffs = daemon_until_exit(&env, &plain_root, REFUSAL_DEADLINE)?;

    let read_only = ReadOnlyBpffs::mount(env.scratch.join("ro-bpf"))?;
    let read_only_root = read_only.path.join("ztunnel");
    let on_read_only = daemon_until_exit(&env, &read_only_root, REFUSAL_DEADLINE)?;

    for (case, outcome) in [
        ("plain directory", &not_bpffs),
        ("read-only bpffs", &on_read_only),
    ] {
        let first_error = outcome
            .log
            .lines()
            .find(|line| line.starts_with("Error:"))
            .unwrap_or("<no Error: line>");
        println!(
            "{case}: {} after {:?}: {first_error}",
            outcome.status, outcome.elapsed
        );
    }
    println!(
        "figures: kernel_faults bpffs_not_bpffs_exit_ms={} bpffs_read_only_exit_ms={}",
        not_bpffs.elapsed.as_millis(),
        on_read_only.elapsed.as_millis()
    );

    assert!(
        !not_bpffs.status.success(),
        "the daemon started on a plain directory"
    );
    assert!(
        not_bpffs.log.contains(&plain_root.display().to_string())
            && not_bpffs.log.contains("not on a bpf filesystem"),
        "the message names the path and the problem:\n{}",
        not_bpffs.log
    );
    assert!(
        !plain_root.exists(),
        "nothing was created on the plain directory"
    );
    assert!(
        !on_read_only.status.success(),
        "the daemon started on a read-only bpffs"
    );
    assert!(
        on_read_only
            .log
            .contains(&read_only_root.display().to_string())
            && on_read_only.log.contains("mounted read-only"),
        "the message names the path and the problem:\n{}",
        on_read_only.log
    );
    assert!(
        !on_read_only.log.contains("ztunnel daemon ready"),
        "the daemon never reported ready"
    );
    Ok(())
}

/// Node 1 can enroll two pods; `third` is one too many.
const CAPACITY_MESH: &str = r#"
workloads:
- {uid: t//first, name: first, namespace: default, serviceAccount: first, workloadIps: ["198.18.1.2"], protocol: HBONE, node: node-1}
- {uid: t//second, name: second, namespace: default, serviceAccount: second, workloadIps: ["198.18.1.3"], protocol: HBONE, node: node-1}
- {uid: t//third, name: third, namespace: default, serviceAccount: third, workloadIps: ["198.18.1.4"], protocol: HBONE, node: node-1}
- {uid: t//web, name: web, namespace: default, serviceAccount: web, workloadIps: ["198.18.2.2"], protocol: HBONE, node: node-2}
"#;

fn curl_from(cluster: &Cluster, pod: &ClusterPod, url: &str) -> anyhow::Result<String> {
    let output = cluster.run_in_pod(pod, &["curl", "-sS", "--max-time", "10", url])?;
    println!(
        "curl {} -> {url}: {}, body {:?}, stderr {:?}",
        pod.name,
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(if output.status.success() {
        String::from_utf8_lossy(&output.stdout).into_owned()
    } else {
        String::new()
    })
}

fn pod_names(node: &ClusterNode) -> anyhow::Result<Vec<String>> {
    let text = node.ztunnel_cli(&["inspect", "pods", "--json"])?;
    let rows: serde_json::Value = serde_json::from_str(text.trim())?;
    let mut names: Vec<String> = rows
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|row| row["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

#[test]
fn a_full_pods_map_fails_cni_add_with_the_spec_error_and_existing_pods_keep_working()
-> anyhow::Result<()> {
    let mut cluster = Cluster::new("kernel_faults_capacity", 2, CAPACITY_MESH)?;
    cluster.node_mut(1).start_ztunnel(&["--max-pods", "2"])?;
    cluster.node_mut(2).start_ztunnel(&[])?;
    let web = cluster.pod(2, "default", "web")?;
    let _server = HttpServer::start(web.netns(), (web.ip, 8080).into(), "web")?;
    let first = cluster.pod(1, "default", "first")?;
    let second = cluster.pod(1, "default", "second")?;

    let started = Instant::now();
    let third = cluster.pod(1, "default", "third");
    let refused_after = started.elapsed();
    let failure = match &third {
        Ok(pod) => anyhow::bail!(
            "CNI ADD of a third pod succeeded on a node sized for two: {}",
            pod.ip
        ),
        Err(error) => error.downcast_ref::<PluginFailure>(),
    };
    let spec_error = failure.and_then(|failure| failure.error.clone());
    let pods_after = pod_names(cluster.node(1))?;
    let config: serde_json::Value = serde_json::from_str(
        cluster
            .node(1)
            .ztunnel_cli(&["inspect", "config", "--json"])?
            .trim(),
    )?;
    let url = format!("http://{}:8080/", web.ip);
    let first_body = curl_from(&cluster, &first, &url)?;
    let second_body = curl_from(&cluster, &second, &url)?;
    let pins = std::fs::read_dir(cluster.node(1).bpffs_root.join("pod-links"))?.count();
    println!(
        "third ADD failed after {refused_after:?}: {}",
        third
            .as_ref()
            .err()
            .map(|error| format!("{error:#}"))
            .unwrap_or_default()
    );
    println!("spec error: {spec_error:?}");
    println!(
        "node 1 pods after: {pods_after:?}, pod link pins: {pins}; inspect config: pods {}/{}",
        config["pods_enrolled"], config["pods_capacity"]
    );
    println!(
        "figures: kernel_faults pods_map_capacity=2 refused_add_ms={}",
        refused_after.as_millis()
    );

    let failure =
        failure.ok_or_else(|| anyhow::anyhow!("the ADD failure is not a plugin failure"))?;
    assert_eq!(failure.plugin, "ztunnel-cni", "ztunnel-cni refused the pod");
    let spec_error = spec_error.ok_or_else(|| anyhow::anyhow!("no CNI error JSON on stdout"))?;
    assert_eq!(spec_error["code"], 102, "the pod-capacity code");
    assert_eq!(spec_error["cniVersion"], "1.0.0");
    assert!(
        spec_error["msg"]
            .as_str()
            .is_some_and(|msg| msg.contains("capacity"))
    );
    let details = spec_error["details"].as_str().unwrap_or_default();
    assert!(
        details.contains("default/third") && details.contains("2 enrolled pods"),
        "details name the pod and the capacity: {details}"
    );
    assert_eq!(
        pods_after,
        vec!["first", "second"],
        "the enrolled pods are unchanged"
    );
    assert_eq!(pins, 2, "the refused pod left no pinned link");
    assert_eq!(
        (
            config["pods_enrolled"].as_u64(),
            config["pods_capacity"].as_u64()
        ),
        (Some(2), Some(2)),
        "`ztunnel inspect config` shows the node is at its capacity"
    );
    assert!(
        first_body.starts_with("web peer=198.18.1.2:"),
        "first still reaches web: {first_body:?}"
    );
    assert!(
        second_body.starts_with("web peer=198.18.1.3:"),
        "second still reaches web: {second_body:?}"
    );
    Ok(())
}

/// `late` is added while node 2's ztunnel is down, `stopping` while its socket accepts and
/// hangs up without answering (a ztunnel on its way out), `starting` while it starts again.
const RESTART_MESH: &str = r#"
workloads:
- {uid: t//client, name: client, namespace: default, serviceAccount: client, workloadIps: ["198.18.1.2"], protocol: HBONE, node: node-1}
- {uid: t//late, name: late, namespace: default, serviceAccount: late, workloadIps: ["198.18.2.2"], protocol: HBONE, node: node-2}
- {uid: t//stopping, name: stopping, namespace: default, serviceAccount: stopping, workloadIps: ["198.18.2.3"], protocol: HBONE, node: node-2}
- {uid: t//starting, name: starting, namespace: default, serviceAccount: starting, workloadIps: ["198.18.2.4"], protocol: HBONE, node: node-2}
"#;

/// While alive, the enrollment socket of `run_dir` accepts connections and closes them unread,
/// as a ztunnel that is shutting down does.
struct HangingUpSocket {
    path: PathBuf,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _thread: std::thread::JoinHandle<()>,
}

impl HangingUpSocket {
    fn bind(run_dir: &std::path::Path) -> anyhow::Result<Self> {
        let path = run_dir.join(ztunnel::enrollment::SOCKET_NAME);
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        let thread = std::thread::spawn(move || {
            for connection in listener.incoming() {
                let Ok(connection) = connection else { break };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(connection);
            }
        });
        Ok(Self {
            path,
            accepted,
            _thread: thread,
        })
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for HangingUpSocket {
    /// Unlinking the path is enough for the next ztunnel; the accept thread stays blocked on a
    /// socket nobody can reach any more and ends with the test process.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn a_cni_add_while_ztunnel_restarts_succeeds_and_the_pod_is_served_once_ztunnel_is_back()
-> anyhow::Result<()> {
    let mut cluster = Cluster::new("kernel_faults_add_restart", 2, RESTART_MESH)?;
    cluster.node_mut(1).start_ztunnel(&[])?;
    cluster.node_mut(2).start_ztunnel(&[])?;
    let client = cluster.pod(1, "default", "client")?;

    cluster.node_mut(2).kill_ztunnel()?;
    let started = Instant::now();
    let late = cluster.pod(2, "default", "late")?;
    let add_while_down = started.elapsed();
    let _late_server = HttpServer::start(late.netns(), (late.ip, 8080).into(), "late")?;
    let enrolled_while_down = pod_names(cluster.node(2))?;
    let late_url = format!("http://{}:8080/", late.ip);
    let while_down = curl_from(&cluster, &client, &late_url)?;

    let hanging_up = HangingUpSocket::bind(&cluster.node(2).run_dir)?;
    let started = Instant::now();
    let stopping = cluster.pod(2, "default", "stopping")?;
    let add_while_stopping = started.elapsed();
    let hung_up = hanging_up.accepted();
    drop(hanging_up);
    let _stopping_server =
        HttpServer::start(stopping.netns(), (stopping.ip, 8080).into(), "stopping")?;

    let offset = cluster.node_mut(2).start_ztunnel_without_waiting(&[])?;
    let restarted = Instant::now();
    let starting = cluster.pod(2, "default", "starting")?;
    let add_while_starting = restarted.elapsed();
    let ready_before_add_returned =
        cluster.node(2).ztunnel_log()[offset as usize..].contains("ztunnel daemon ready");
    let _starting_server =
        HttpServer::start(starting.netns(), (starting.ip, 8080).into(), "starting")?;
    let node2 = cluster.node(2);
    node2.wait_for_log("ztunnel to be ready", offset, &["ztunnel daemon ready"])?;
    for pod in ["late", "stopping", "starting"] {
        node2.wait_for_log(
            &format!("ztunnel to serve {pod}"),
            offset,
            &["serving pod", &format!("pod={pod}")],
        )?;
    }
    let served_after = restarted.elapsed();
    let late_body = curl_from(&cluster, &client, &late_url)?;
    let starting_body = curl_from(&cluster, &client, &format!("http://{}:8080/", starting.ip))?;
    let stopping_body = curl_from(&cluster, &client, &format!("http://{}:8080/", stopping.ip))?;
    println!("node 2 pods while its ztunnel was down: {enrolled_while_down:?}");
    println!(
        "ADD while down took {add_while_down:?}; ADD while the socket hung up ({hung_up} connections) took {add_while_stopping:?}; ADD while starting took {add_while_starting:?} (daemon ready before it returned: {ready_before_add_returned}); all three served {served_after:?} after the restart"
    );
    println!(
        "figures: kernel_faults add_while_down_ms={} add_while_hung_up_ms={} add_while_starting_ms={} restart_to_served_ms={}",
        add_while_down.as_millis(),
        add_while_stopping.as_millis(),
        add_while_starting.as_millis(),
        served_after.as_millis()
    );

    assert!(
        enrolled_while_down.contains(&"late".to_owned()),
        "the ADD while ztunnel was down enrolled the pod durably"
    );
    assert!(
        while_down.is_empty(),
        "the pod was reachable while no ztunnel served it (fail-closed expected): {while_down:?}"
    );
    assert!(
        late_body.starts_with("late peer=198.18.1.2:"),
        "the pod added while ztunnel was down is served after the restart: {late_body:?}"
    );
    assert!(hung_up >= 1, "the ADD reached the hanging-up socket");
    assert!(
        stopping_body.starts_with("stopping peer=198.18.1.2:"),
        "the pod added while ztunnel hung up is served after the restart: {stopping_body:?}"
    );
    assert!(
        starting_body.starts_with("starting peer=198.18.1.2:"),
        "the pod added while ztunnel was starting is served: {starting_body:?}"
    );
    Ok(())
}

/// Node 1's pinned links get an older build's programs while its ztunnel is down.
const UPGRADE_MESH: &str = r#"
workloads:
- {uid: t//client, name: client, namespace: default, serviceAccount: client, workloadIps: ["198.18.1.2"], protocol: HBONE, node: node-1}
- {uid: t//web, name: web, namespace: default, serviceAccount: web, workloadIps: ["198.18.2.2"], protocol: HBONE, node: node-2}
"#;

#[test]
fn programs_of_an_older_build_behind_the_pinned_links_are_replaced_leaving_one_per_hook()
-> anyhow::Result<()> {
    let mut cluster = Cluster::new("kernel_faults_old_build", 2, UPGRADE_MESH)?;
    cluster.node_mut(1).start_ztunnel(&[])?;
    cluster.node_mut(2).start_ztunnel(&[])?;
    let client = cluster.pod(1, "default", "client")?;
    let web = cluster.pod(2, "default", "web")?;
    let _server = HttpServer::start(web.netns(), (web.ip, 8080).into(), "web")?;
    cluster.node_mut(1).stop_ztunnel()?;

    // What an older build left behind: other programs behind the pinned links of the same hooks
    // (swapped in through the links), and a link on another hook pinned under a name this build
    // uses for getpeername4.
    let node = cluster.node(1);
    let pods: serde_json::Value =
        serde_json::from_str(node.ztunnel_cli(&["inspect", "pods", "--json"])?.trim())?;
    let cookie = pods[0]["netns_cookie"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no netns cookie in {pods}"))?;
    let connect4_pin = node.bpffs_root.join("links/connect4");
    let tc_pin = node
        .bpffs_root
        .join(format!("pod-links/{cookie}/tc_ingress"));
    let misplaced_pin = node.bpffs_root.join("links/getpeername4");
    let old_connect4 = load_trivial_program(
        PROG_TYPE_CGROUP_SOCK_ADDR,
        ATTACH_CGROUP_INET4_CONNECT,
        1,
        "old_connect4",
    )?;
    let old_tc = load_trivial_program(PROG_TYPE_SCHED_CLS, 0, -1, "old_tc")?;
    let connect4_link = bpf_syscall::open_pin(&connect4_pin)?;
    bpf_syscall::replace_link_program(&connect4_link, &old_connect4)?;
    let tc_link = bpf_syscall::open_pin(&tc_pin)?;
    bpf_syscall::replace_link_program(&tc_link, &old_tc)?;
    std::fs::remove_file(&misplaced_pin)?;
    let old_misplaced = load_trivial_program(
        PROG_TYPE_CGROUP_SOCK_ADDR,
        ATTACH_CGROUP_INET4_CONNECT,
        1,
        "old_misplaced",
    )?;
    let cgroup_file = std::fs::File::open(&node.cgroup)?;
    let misplaced_link = bpf_syscall::create_cgroup_link(
        &old_misplaced,
        &cgroup_file,
        CgroupAttachType::Inet4Connect,
    )?;
    bpf_syscall::pin(&misplaced_link, &misplaced_pin)?;
    let connect4_before = bpf_syscall::link_info(&connect4_link)?;
    let old_ids = [program_id(&old_connect4)?, program_id(&old_tc)?];
    drop((connect4_link, tc_link, misplaced_link));
    let cgroup_before = cgroup_programs(&node.cgroup)?;
    let tc_before = tcx_ingress_programs(client.netns(), "eth0")?;

    let started = Instant::now();
    cluster.node_mut(1).start_ztunnel(&[])?;
    let upgraded_after = started.elapsed();
    let node = cluster.node(1);
    let cgroup_after = cgroup_programs(&node.cgroup)?;
    let tc_after = tcx_ingress_programs(client.netns(), "eth0")?;
    let connect4_after = bpf_syscall::link_info(&bpf_syscall::open_pin(&connect4_pin)?)?;
    let stats_before = node.ztunnel_cli(&["inspect", "stats", "--json"])?;
    let body = curl_from(&cluster, &client, &format!("http://{}:8080/", web.ip))?;
    let stats_after = node.ztunnel_cli(&["inspect", "stats", "--json"])?;
    let outcomes: Vec<String> = node
        .ztunnel_log()
        .lines()
        .filter(|line| {
            line.contains("outcome=") || line.contains("tc=") || line.contains("replacing")
        })
        .map(str::to_owned)
        .collect();
    println!("before: cgroup {cgroup_before:?}\n        TCX ingress {tc_before:?}");
    println!("after:  cgroup {cgroup_after:?}\n        TCX ingress {tc_after:?}");
    println!(
        "connect4 link before {connect4_before:?}, after {connect4_after:?}; old program ids {old_ids:?}"
    );
    println!("adoption log: {outcomes:#?}");
    println!("stats before curl {stats_before}\nstats after curl {stats_after}");
    println!(
        "figures: kernel_faults old_build_restart_to_ready_ms={} cgroup_hooks_after={} tcx_programs_after={}",
        upgraded_after.as_millis(),
        cgroup_after.len(),
        tc_after.len()
    );

    assert!(
        cgroup_before.iter().any(|(_, name)| name == "old_connect4")
            && cgroup_before
                .iter()
                .any(|(_, name)| name == "old_misplaced")
            && tc_before == vec!["old_tc".to_owned()],
        "the older build's programs were in place before the restart"
    );
    let mut names: Vec<&str> = cgroup_after.iter().map(|(_, name)| name.as_str()).collect();
    names.sort_unstable();
    let mut expected_names = CGROUP_PROGRAMS.to_vec();
    expected_names.sort_unstable();
    assert_eq!(
        names, expected_names,
        "exactly this build's programs, one per hook"
    );
    let mut hooks: Vec<&str> = cgroup_after.iter().map(|(hook, _)| hook.as_str()).collect();
    hooks.sort_unstable();
    hooks.dedup();
    assert_eq!(
        hooks.len(),
        CGROUP_PROGRAMS.len(),
        "no hook carries two programs"
    );
    assert_eq!(
        tc_after,
        vec!["tc_ingress".to_owned()],
        "one TC program, this build's"
    );
    assert_eq!(
        connect4_after.id, connect4_before.id,
        "connect4 was upgraded in place (the same link, BPF_LINK_UPDATE)"
    );
    assert!(
        !old_ids.contains(&connect4_after.program_id),
        "the connect4 link runs a new program"
    );
    assert!(
        body.starts_with("web peer=198.18.1.2:"),
        "the client reaches web through the upgraded capture: {body:?}"
    );
    let redirected = |text: &str| -> u64 {
        serde_json::from_str::<serde_json::Value>(text.trim()).unwrap_or_default()[0]
            ["outbound_redirected"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(
        redirected(&stats_after) > redirected(&stats_before),
        "the new connect4 redirected the client's connection"
    );
    Ok(())
}

/// `late` is created while node 1's `pods` map has another build's layout.
const LAYOUT_MESH: &str = r#"
workloads:
- {uid: t//client, name: client, namespace: default, serviceAccount: client, workloadIps: ["198.18.1.2"], protocol: HBONE, node: node-1}
- {uid: t//late, name: late, namespace: default, serviceAccount: late, workloadIps: ["198.18.1.3"], protocol: HBONE, node: node-1}
- {uid: t//web, name: web, namespace: default, serviceAccount: web, workloadIps: ["198.18.2.2"], protocol: HBONE, node: node-2}
"#;

/// `bpftool map show pinned <path>`: (value size, max entries).
fn map_sizes(node: &ClusterNode, path: &std::path::Path) -> anyhow::Result<(u64, u64)> {
    let output = node.run(&[
        "bpftool",
        "map",
        "show",
        "pinned",
        &path.display().to_string(),
        "--json",
    ])?;
    let info: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    Ok((
        info["bytes_value"].as_u64().unwrap_or(0),
        info["max_entries"].as_u64().unwrap_or(0),
    ))
}

#[test]
fn a_pinned_map_with_another_builds_layout_is_recreated_by_the_daemon_and_refused_by_cni()
-> anyhow::Result<()> {
    let mut cluster = Cluster::new("kernel_faults_map_layout", 2, LAYOUT_MESH)?;
    cluster.node_mut(1).start_ztunnel(&[])?;
    cluster.node_mut(2).start_ztunnel(&[])?;
    let client = cluster.pod(1, "default", "client")?;
    let web = cluster.pod(2, "default", "web")?;
    let _server = HttpServer::start(web.netns(), (web.ip, 8080).into(), "web")?;
    cluster.node_mut(1).stop_ztunnel()?;

    // Another build's `pods`: same name and key, a 32-byte value.
    let pods_pin = cluster.node(1).bpffs_root.join("pods");
    let expected = map_sizes(cluster.node(1), &pods_pin)?;
    std::fs::remove_file(&pods_pin)?;
    let old_pods = create_hash_map(8, 32, 64, "pods")?;
    bpf_syscall::pin(&old_pods, &pods_pin)?;
    drop(old_pods);
    let pinned_old = map_sizes(cluster.node(1), &pods_pin)?;
    let refused = cluster.pod(1, "default", "late");
    let refusal = refused
        .as_ref()
        .err()
        .and_then(|error| error.downcast_ref::<PluginFailure>())
        .and_then(|failure| failure.error.clone());

    let started = Instant::now();
    cluster.node_mut(1).start_ztunnel(&[])?;
    let restart = started.elapsed();
    let node = cluster.node(1);
    let recreated = map_sizes(node, &pods_pin)?;
    let pods = node.ztunnel_cli(&["inspect", "pods", "--json"])?;
    let log: Vec<String> = node
        .ztunnel_log()
        .lines()
        .filter(|line| line.contains("recreat"))
        .map(str::to_owned)
        .collect();
    let body = curl_from(&cluster, &client, &format!("http://{}:8080/", web.ip))?;
    println!(
        "pods map (value bytes, max entries): this build {expected:?}, pinned by the other build {pinned_old:?}, after the restart {recreated:?}"
    );
    println!("CNI ADD while the other layout was pinned: {refusal:?}");
    println!("daemon log: {log:#?}\nnode 1 pods after: {pods}");
    println!(
        "figures: kernel_faults map_layout_restart_to_ready_ms={}",
        restart.as_millis()
    );

    let refusal =
        refusal.ok_or_else(|| anyhow::anyhow!("the CNI ADD did not fail with a spec error"))?;
    assert!(
        refusal["details"]
            .as_str()
            .is_some_and(|details| details.contains("another ztunnel build's layout")),
        "the CNI plugin refuses to touch maps of another layout: {refusal}"
    );
    assert_eq!(
        recreated, expected,
        "the daemon recreated pods with this build's layout"
    );
    assert!(
        log.iter()
            .any(|line| line.contains("map=\"pods\"") || line.contains("map=pods")),
        "the daemon says it recreated the pods map"
    );
    assert!(
        pods.contains("\"client\""),
        "the enrolled pod was rebuilt into the new map"
    );
    assert!(
        body.starts_with("web peer=198.18.1.2:"),
        "the enrolled pod is captured and served through the new map: {body:?}"
    );
    Ok(())
}
