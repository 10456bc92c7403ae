//! The capture agent and our proxy as two processes joined by ZDS (`ztunnel agent` +
//! `ztunnel proxy`): either one restarts while the other keeps running, and the node goes on
//! serving; a proxy the agent's hooks cannot answer for is refused by name.

use ztunnel_e2e::{
    Pod, TestEnv,
    server::HttpServer,
    ztunnel::{Daemon, cli},
};

/// curl from `client` to `url`: whether it got `expected` back.
fn fetch(env: &TestEnv, client: &Pod, url: &str, expected: &str) -> anyhow::Result<bool> {
    let curl = env.run_in_pod(client, &["curl", "-sS", "--max-time", "3", url])?;
    let body = String::from_utf8_lossy(&curl.stdout).into_owned();
    println!(
        "curl {url} from {}: {} body {body:?} stderr {:?}",
        client.name,
        curl.status,
        String::from_utf8_lossy(&curl.stderr).trim()
    );
    Ok(curl.status.success() && body.contains(expected))
}

#[test]
fn a_proxy_restart_with_the_agent_up_serves_every_pod_again() -> anyhow::Result<()> {
    let env = TestEnv::new("zds_proxy_restart")?;
    let node = env.node(1)?;
    let client = node.pod("client", 10)?;
    let server_pod = node.pod("server", 20)?;
    let _server = HttpServer::start(&server_pod.netns, (server_pod.ip, 8080).into(), "hello")?;
    let url = format!("http://{}:8080/", server_pod.ip);
    let agent = Daemon::start_agent(&env, &[])?;
    env.enroll(&client)?;
    let proxy = Daemon::spawn_proxy(&env, false)?;
    proxy.wait_serving(&client)?;
    let through_first = fetch(&env, &client, &url, "hello")?;
    let captured = proxy.wait_for_log_all(
        "the first proxy to capture the client's connection",
        &["outbound connection captured", "pod=client"],
    )?;
    println!("first proxy: {captured}");

    proxy.crash()?;
    let while_down = fetch(&env, &client, &url, "hello")?;

    let second = Daemon::spawn_proxy(&env, false)?;
    second.wait_serving(&client)?;
    let through_second = fetch(&env, &client, &url, "hello")?;
    let recaptured = second.wait_for_log_all(
        "the second proxy to capture the client's connection",
        &["outbound connection captured", "pod=client"],
    )?;
    println!("second proxy: {recaptured}");
    let agent_log = agent.log();
    let connects = agent_log
        .matches("a proxy connected to the ZDS socket")
        .count();
    println!("agent saw {connects} proxy connections");

    assert!(through_first, "the first proxy did not carry the request");
    assert!(
        !while_down,
        "with no proxy the fail-closed pod reached the server directly"
    );
    assert!(
        through_second,
        "the restarted proxy did not carry the request"
    );
    assert_eq!(connects, 2, "the agent did not see both proxies connect");
    second.stop()?;
    agent.stop()?;
    Ok(())
}

#[test]
fn an_agent_restart_with_the_proxy_up_keeps_serving_and_reconciles() -> anyhow::Result<()> {
    let env = TestEnv::new("zds_agent_restart")?;
    let node = env.node(1)?;
    let stays = node.pod("stays", 10)?;
    let leaves = node.pod("leaves", 11)?;
    let arrives = node.pod("arrives", 12)?;
    let server_pod = node.pod("server", 20)?;
    let _server = HttpServer::start(&server_pod.netns, (server_pod.ip, 8080).into(), "hello")?;
    let url = format!("http://{}:8080/", server_pod.ip);
    let agent = Daemon::start_agent(&env, &[])?;
    env.enroll(&stays)?;
    env.enroll(&leaves)?;
    let proxy = Daemon::spawn_proxy(&env, false)?;
    proxy.wait_serving(&stays)?;
    proxy.wait_serving(&leaves)?;

    agent.stop()?;
    let while_agent_down = fetch(&env, &stays, &url, "hello")?;
    // Enrollment changes the agent does not see live: the CLI writes the enrolled set.
    cli(&env, &["unenroll", "--name", "leaves"])?;
    env.enroll(&arrives)?;

    let restarted = Daemon::start_agent(&env, &[])?;
    proxy.wait_serving(&arrives)?;
    let dropped = proxy.wait_for_log_all(
        "the proxy to close the pod the new snapshot does not name",
        &["not in the agent's snapshot", "pod=leaves"],
    )?;
    println!("proxy: {dropped}");
    let after = fetch(&env, &stays, &url, "hello")?;
    let new_pod = fetch(&env, &arrives, &url, "hello")?;
    let proxy_log = proxy.log();
    let stays_served = proxy_log
        .lines()
        .filter(|line| line.contains("serving pod") && line.contains("pod=stays"))
        .count();
    println!("the proxy opened stays's listeners {stays_served} time(s)");

    assert!(
        while_agent_down,
        "the proxy stopped serving while the agent was down"
    );
    assert!(after, "the pod that stayed is not served after the restart");
    assert!(
        new_pod,
        "the pod enrolled while the agent was down is not served"
    );
    assert_eq!(
        stays_served, 1,
        "the pod that stayed had its listeners reopened instead of kept"
    );
    proxy.stop()?;
    restarted.stop()?;
    Ok(())
}

#[test]
fn a_proxy_outside_the_hooks_cgroup_is_refused_naming_both_cgroups() -> anyhow::Result<()> {
    let env = TestEnv::new("zds_proxy_cgroup")?;
    let agent = Daemon::start_agent(&env, &[])?;
    let _outside = Daemon::spawn_proxy(&env, true)?;
    let refusal = agent.wait_for_log_all(
        "the agent to refuse the proxy outside its cgroup",
        &["proxy refused", "outside"],
    )?;
    println!("agent: {refusal}");
    let attach = env
        .cgroup
        .file_name()
        .map(|name| name.to_string_lossy().into_owned());
    assert!(
        attach.is_some_and(|name| refusal.contains(&name)),
        "the refusal does not name the attach cgroup {}",
        env.cgroup.display()
    );
    agent.stop()?;
    Ok(())
}
