//! Unenrolling a pod (with the daemon running) removes its capture: its listeners close, its
//! TC program and pins go, and its traffic flows directly again.

use ztunnel_e2e::{
    TestEnv,
    kernel::tcx_ingress_programs,
    process,
    server::HttpServer,
    ztunnel::{Daemon, cli},
};

#[test]
fn unenrolled_pod_is_no_longer_captured() -> anyhow::Result<()> {
    let env = TestEnv::new("unenroll_releases_pod")?;
    let node = env.node(1)?;
    let client = node.pod("client", 10)?;
    let server_pod = node.pod("server", 20)?;
    let server = HttpServer::start(&server_pod.netns, (server_pod.ip, 8080).into(), "hello")?;
    let daemon = Daemon::start(&env, &[])?;
    env.enroll(&client)?;
    daemon.wait_serving(&client)?;
    let tc_before = tcx_ingress_programs(&client.netns, "eth0")?;

    let unenrolled = cli(&env, &["unenroll", "--name", "client"])?;
    daemon.wait_for_log(
        "the daemon to close the pod's listeners",
        "pod unenrolled; its listeners are closed",
    )?;
    let listeners = process::run(
        None,
        Some(&client.netns),
        &["ss", "-Hltn", "sport = :15001"],
    )?;
    let listeners = String::from_utf8_lossy(&listeners.stdout).into_owned();
    let tc_after = tcx_ingress_programs(&client.netns, "eth0")?;
    let pods = cli(&env, &["inspect", "pods"])?;
    let pod_links: Vec<_> = std::fs::read_dir(env.bpffs_root().join("pod-links"))?
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    let url = format!("http://{}:8080/", server_pod.ip);
    let curl = env.run_in_pod(&client, &["curl", "-sS", "--max-time", "5", &url])?;
    let body = String::from_utf8_lossy(&curl.stdout).into_owned();
    println!(
        "{}; TC before {tc_before:?}, after {tc_after:?}; 15001 listeners {listeners:?}; pod pins {pod_links:?}",
        unenrolled.trim()
    );
    println!(
        "inspect pods:\n{pods}curl {url}: {} body {body:?}; server peers {:?}",
        curl.status,
        server.peers()
    );
    assert_eq!(tc_before, vec!["tc_ingress".to_owned()]);
    assert!(tc_after.is_empty(), "the TC program is still attached");
    assert!(
        listeners.trim().is_empty(),
        "the outbound listener is still open"
    );
    assert!(pod_links.is_empty(), "pod pins remain");
    assert!(
        !pods.contains("default/client"),
        "the pod is still in the pods map"
    );
    assert!(curl.status.success(), "the released pod cannot connect");
    assert!(body.starts_with(&format!("hello peer={}:", client.ip)));
    assert_eq!(
        daemon.log().matches("outbound connection captured").count(),
        0,
        "the released pod was captured"
    );
    daemon.stop()?;
    Ok(())
}

#[test]
fn a_second_daemon_on_the_same_run_dir_is_refused() -> anyhow::Result<()> {
    let env = TestEnv::new("second_daemon_refused")?;
    let first = Daemon::start(&env, &[])?;
    let second = Daemon::start(&env, &[]);
    let error = second
        .err()
        .map(|error| format!("{error:#}"))
        .unwrap_or_default();
    println!("second daemon: {error}");
    assert!(
        error.contains("another ztunnel daemon uses run dir"),
        "a second daemon started or failed for another reason"
    );
    first.stop()?;
    Ok(())
}
