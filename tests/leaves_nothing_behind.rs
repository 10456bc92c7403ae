//! Must-show (f): a full scenario (nodes, pods, daemon, enrollment, captured traffic, restart)
//! leaves nothing of its own behind: no netns, link, cgroup, bpffs mount or pin, no scratch dir.

use ztunnel_e2e::{
    TestEnv,
    env::{leftovers, leftovers_of_dead_runs},
    server::HttpServer,
    ztunnel::Daemon,
};

fn scenario() -> anyhow::Result<String> {
    let env = TestEnv::new("leaves_nothing_behind")?;
    let prefix = env.prefix.clone();
    let node = env.node(1)?;
    let client = node.pod("client", 10)?;
    let server_pod = node.pod("server", 20)?;
    let _server = HttpServer::start(&server_pod.netns, (server_pod.ip, 8080).into(), "hello")?;
    let daemon = Daemon::start(&env, &[])?;
    env.enroll(&client)?;
    daemon.wait_serving(&client)?;
    let url = format!("http://{}:8080/", server_pod.ip);
    let curl = env.run_in_pod(&client, &["curl", "-sS", "--max-time", "5", &url])?;
    anyhow::ensure!(
        curl.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&curl.stderr)
    );
    // Crash the daemon so cleanup has to cope with pins and links left by a dead process.
    daemon.crash()?;
    let during = leftovers(&prefix);
    println!("while the scenario runs, its resources: {during:#?}");
    anyhow::ensure!(
        during.iter().any(|item| item.starts_with("netns")),
        "the leftover check sees no netns while they exist"
    );
    anyhow::ensure!(
        during.iter().any(|item| item.starts_with("mount")),
        "the leftover check sees no bpffs mount while it exists"
    );
    anyhow::ensure!(
        during.iter().any(|item| item.starts_with("cgroup")),
        "the leftover check sees no cgroup while it exists"
    );
    Ok(prefix)
}

#[test]
fn the_suite_leaves_nothing_of_its_own_behind() -> anyhow::Result<()> {
    let prefix = scenario()?;
    let after = leftovers(&prefix);
    println!("after teardown, resources named {prefix}: {after:#?}");
    assert!(after.is_empty(), "left behind: {after:#?}");
    let earlier = leftovers_of_dead_runs();
    println!("resources of earlier, finished test runs: {earlier:#?}");
    assert!(
        earlier.is_empty(),
        "earlier test runs left behind: {earlier:#?}"
    );
    Ok(())
}
