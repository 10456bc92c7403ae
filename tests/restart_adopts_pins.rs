//! Must-show (e): capture survives a daemon crash (pinned links), and restarts adopt what is
//! pinned: exactly one copy of each program on each hook afterwards. Also: the pins of a pod
//! whose netns disappeared while ztunnel was down are removed at the next start.

use ztunnel_e2e::{
    TestEnv,
    kernel::{cgroup_programs, tcx_ingress_programs},
    server::HttpServer,
    ztunnel::{Daemon, cli, counters},
};

#[test]
fn crash_keeps_capture_and_restarts_leave_one_copy_per_hook() -> anyhow::Result<()> {
    let env = TestEnv::new("restart_adopts_pins")?;
    let node = env.node(1)?;
    let client = node.pod("client", 10)?;
    let server_pod = node.pod("server", 20)?;
    let server = HttpServer::start(
        &server_pod.netns,
        (server_pod.ip, 8080).into(),
        "hello from server",
    )?;
    let url = format!("http://{}:8080/", server_pod.ip);
    let curl = |label: &str| -> anyhow::Result<bool> {
        let output = env.run_in_pod(&client, &["curl", "-sS", "--max-time", "5", &url])?;
        println!(
            "{label}: curl {url}: {} {:?}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim()
        );
        Ok(output.status.success())
    };

    let first = Daemon::start(&env, &[])?;
    env.enroll(&client)?;
    first.wait_serving(&client)?;
    assert!(
        curl("first daemon")?,
        "capture through the first daemon failed"
    );
    first.crash()?;

    server_pod.wait_tcp_quiescent()?;
    let segments_before = server_pod.tcp_segments_received()?;
    let before_crash_curl = counters(&env, &client)?;
    let while_down = curl("daemon SIGKILLed")?;
    let after_crash_curl = counters(&env, &client)?;
    let segments_after = server_pod.tcp_segments_received()?;
    println!(
        "while down: counters {before_crash_curl:?} -> {after_crash_curl:?}; server netns TCP segments {segments_before} -> {segments_after}"
    );
    assert!(
        !while_down,
        "an enrolled pod connected in plaintext while ztunnel was down"
    );
    assert_eq!(
        after_crash_curl.outbound_refused,
        before_crash_curl.outbound_refused + 1,
        "the pinned connect hook did not count the refusal"
    );
    assert_eq!(
        segments_after, segments_before,
        "a segment reached the server while ztunnel was down"
    );

    let second = Daemon::start(&env, &[])?;
    second.wait_serving(&client)?;
    assert!(
        curl("second daemon")?,
        "capture after the first restart failed"
    );
    second.stop()?;
    let third = Daemon::start(&env, &[])?;
    third.wait_serving(&client)?;
    assert!(
        curl("third daemon")?,
        "capture after the second restart failed"
    );
    let adopted = third.wait_for_log_all(
        "the third daemon to adopt connect4",
        &["cgroup program in place", "connect4", "outcome=Adopted"],
    )?;
    let tc_adopted = third.wait_for_log_all(
        "the third daemon to adopt the pod's TC link",
        &["enrolled pod adopted", "pod=client", "tc=Adopted"],
    )?;

    let cgroup_hooks = cgroup_programs(&env.cgroup)?;
    let tc_hooks = tcx_ingress_programs(&client.netns, "eth0")?;
    let final_counters = counters(&env, &client)?;
    println!("third daemon: {adopted}\n{tc_adopted}");
    println!("cgroup {}: {cgroup_hooks:?}", env.cgroup.display());
    println!(
        "TCX ingress on {} eth0: {tc_hooks:?}; counters {final_counters:?}; server peers {:?}",
        client.netns,
        server.peers()
    );
    let mut sorted = cgroup_hooks.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec![
            ("cgroup_getsockopt".to_owned(), "getsockopt".to_owned()),
            ("cgroup_inet4_bind".to_owned(), "bind4".to_owned()),
            ("cgroup_inet4_connect".to_owned(), "connect4".to_owned()),
            (
                "cgroup_inet4_getpeername".to_owned(),
                "getpeername4".to_owned()
            ),
            ("cgroup_inet6_bind".to_owned(), "bind6".to_owned()),
            ("cgroup_inet6_connect".to_owned(), "connect6".to_owned()),
            (
                "cgroup_inet6_getpeername".to_owned(),
                "getpeername6".to_owned()
            ),
            ("cgroup_sock_ops".to_owned(), "sockops_rekey".to_owned()),
        ],
        "not exactly one copy of each cgroup program"
    );
    assert_eq!(
        tc_hooks,
        vec!["tc_ingress".to_owned()],
        "not exactly one TC ingress program"
    );
    assert_eq!(
        final_counters.outbound_redirected, 3,
        "three captured curls"
    );
    assert_eq!(server.peers().len(), 3);
    assert!(
        !third.log().contains("WARN"),
        "the restarted daemon warned (e.g. re-installing in-pod routing): {}",
        third.log()
    );
    third.stop()?;
    Ok(())
}

#[test]
fn pins_of_a_pod_gone_while_down_are_removed_at_start() -> anyhow::Result<()> {
    let env = TestEnv::new("restart_removes_stale")?;
    let node = env.node(1)?;
    let stays = node.pod("stays", 10)?;
    let goes = node.pod("goes", 11)?;
    let first = Daemon::start(&env, &[])?;
    env.enroll(&stays)?;
    env.enroll(&goes)?;
    first.wait_serving(&goes)?;
    let pods_before = cli(&env, &["inspect", "pods", "--json"])?;
    let goes_cookie = serde_json::from_str::<serde_json::Value>(&pods_before)?
        .as_array()
        .into_iter()
        .flatten()
        .find(|pod| pod["name"] == "goes")
        .and_then(|pod| pod["netns_cookie"].as_u64())
        .ok_or_else(|| anyhow::anyhow!("pod goes not in inspect pods: {pods_before}"))?;
    let goes_pin = env
        .bpffs_root()
        .join("pod-links")
        .join(goes_cookie.to_string());
    first.stop()?;
    assert!(
        goes_pin.exists(),
        "no pin dir {} for the enrolled pod",
        goes_pin.display()
    );
    drop(goes);

    let second = Daemon::start(&env, &[])?;
    let removed = second.wait_for_log_all(
        "the daemon to forget the gone pod",
        &["netns is gone", "pod=goes"],
    )?;
    second.wait_serving(&stays)?;
    let pods_after = cli(&env, &["inspect", "pods"])?;
    println!("before: {pods_before}\ndaemon: {removed}\nafter:\n{pods_after}");
    assert!(!goes_pin.exists(), "the gone pod's pins are still there");
    assert!(
        !pods_after.contains("default/goes"),
        "the gone pod is still in the pods map"
    );
    assert!(
        pods_after.contains("default/stays"),
        "the remaining pod was dropped"
    );
    second.stop()?;
    Ok(())
}
