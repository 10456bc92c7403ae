//! Must-show (d): with nothing listening on 15001 in an enrolled pod (daemon stopped), an
//! outbound connect is refused and no SYN reaches the destination's netns; once the node is set
//! fail-open, the same connect goes directly.

use ztunnel_e2e::{
    TestEnv, process,
    server::HttpServer,
    ztunnel::{Daemon, cli, counters},
};

#[test]
fn enrolled_pod_without_ztunnel_is_refused_until_fail_open() -> anyhow::Result<()> {
    let env = TestEnv::new("fail_closed")?;
    let node = env.node(1)?;
    let client = node.pod("client", 10)?;
    let server_pod = node.pod("server", 20)?;
    let server = HttpServer::start(
        &server_pod.netns,
        (server_pod.ip, 8080).into(),
        "hello from server",
    )?;
    let daemon = Daemon::start(&env, &[])?;
    env.enroll(&client)?;
    daemon.wait_serving(&client)?;
    let stop_log = daemon.stop()?;
    let listeners = process::run(
        None,
        Some(&client.netns),
        &["ss", "-Hltn", "sport = :15001"],
    )?;
    let listeners = String::from_utf8_lossy(&listeners.stdout).into_owned();
    println!(
        "daemon stopped: {}",
        stop_log.lines().last().unwrap_or_default()
    );
    println!("listeners on 15001 in the client pod: {listeners:?}");
    assert!(
        listeners.trim().is_empty(),
        "something still listens on 15001 in the pod"
    );

    let url = format!("http://{}:8080/", server_pod.ip);
    let segments_before = server_pod.tcp_segments_received()?;
    let counters_before = counters(&env, &client)?;
    let refused = env.run_in_pod(&client, &["curl", "-sS", "--max-time", "5", &url])?;
    let segments_after = server_pod.tcp_segments_received()?;
    let counters_refused = counters(&env, &client)?;
    println!(
        "fail-closed curl {url}: status {}, stderr {:?}",
        refused.status,
        String::from_utf8_lossy(&refused.stderr).trim()
    );
    println!(
        "TCP segments received by the server netns: {segments_before} -> {segments_after}; counters {counters_before:?} -> {counters_refused:?}; server peers {:?}",
        server.peers()
    );
    assert_eq!(
        refused.status.code(),
        Some(7),
        "curl was not refused (exit 7 = could not connect)"
    );
    assert_eq!(
        segments_after, segments_before,
        "a TCP segment reached the destination netns"
    );
    assert!(
        server.peers().is_empty(),
        "the server accepted a connection"
    );
    assert_eq!(
        counters_refused.outbound_refused,
        counters_before.outbound_refused + 1,
        "the refusal was not counted"
    );

    let config = cli(&env, &["set-fail-mode", "open"])?;
    let shown = cli(&env, &["inspect", "config"])?;
    let direct = env.run_in_pod(&client, &["curl", "-sS", "--max-time", "5", &url])?;
    let body = String::from_utf8_lossy(&direct.stdout).into_owned();
    let counters_open = counters(&env, &client)?;
    println!("{}; inspect config:\n{shown}", config.trim());
    println!(
        "fail-open curl {url}: status {}, body {body:?}; counters {counters_open:?}; server peers {:?}",
        direct.status,
        server.peers()
    );
    assert!(
        shown.contains("fail_mode              open"),
        "inspect config does not show fail-open"
    );
    assert!(direct.status.success(), "fail-open curl failed");
    assert!(
        body.starts_with(&format!("hello from server peer={}:", client.ip)),
        "the server did not see the client directly"
    );
    assert_eq!(
        counters_open.outbound_passed,
        counters_refused.outbound_passed + 1,
        "the direct connect was not counted as passed"
    );
    assert_eq!(
        counters_open.outbound_redirected, counters_refused.outbound_redirected,
        "the fail-open connect was redirected"
    );
    Ok(())
}

#[test]
fn inbound_plaintext_to_a_pod_without_ztunnel_is_dropped_until_fail_open() -> anyhow::Result<()> {
    let env = TestEnv::new("fail_closed_inbound")?;
    let node = env.node(1)?;
    let app = node.pod("app", 10)?;
    let client = node.pod("client", 20)?;
    let app_server = HttpServer::start(&app.netns, (app.ip, 8080).into(), "hello from app")?;
    let daemon = Daemon::start(&env, &[])?;
    env.enroll(&app)?;
    daemon.wait_serving(&app)?;
    daemon.stop()?;

    let url = format!("http://{}:8080/", app.ip);
    let before = counters(&env, &app)?;
    // The SYN is dropped, so curl can only give up; --connect-timeout bounds the wait.
    let dropped = process::run(
        None,
        Some(&client.netns),
        &["curl", "-sS", "--connect-timeout", "2", &url],
    )?;
    let after_drop = counters(&env, &app)?;
    println!(
        "fail-closed inbound curl {url}: {} stderr {:?}; counters {before:?} -> {after_drop:?}; app peers {:?}",
        dropped.status,
        String::from_utf8_lossy(&dropped.stderr).trim(),
        app_server.peers()
    );
    assert!(
        !dropped.status.success(),
        "plaintext reached the pod while ztunnel was down"
    );
    assert!(
        app_server.peers().is_empty(),
        "the application accepted a connection"
    );
    assert!(
        after_drop.inbound_refused > before.inbound_refused,
        "the dropped SYN was not counted"
    );

    cli(&env, &["set-fail-mode", "open"])?;
    let direct = process::run(
        None,
        Some(&client.netns),
        &["curl", "-sS", "--max-time", "5", &url],
    )?;
    let body = String::from_utf8_lossy(&direct.stdout).into_owned();
    let after_open = counters(&env, &app)?;
    println!(
        "fail-open inbound curl {url}: {} body {body:?}; counters {after_open:?}",
        direct.status
    );
    assert!(direct.status.success(), "fail-open inbound curl failed");
    assert_eq!(
        body,
        format!(
            "hello from app peer={}:{}\n",
            client.ip,
            app_server.peers()[0].port()
        ),
        "the app did not see the client directly"
    );
    assert!(
        after_open.inbound_passed > after_drop.inbound_passed,
        "the direct SYN was not counted as passed"
    );
    Ok(())
}
