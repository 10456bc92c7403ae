//! Another proxy serves our capture with Istio ztunnel's socket habits (`foreign-proxy`, run in
//! the test cgroup after our daemon enrolled the pod and stopped; its pins keep capturing):
//!
//! - its dual-stack `[::]:15001` listener gets the original destination from
//!   `SOL_IP`/`SO_ORIGINAL_DST` on the IPv4-mapped accepted socket (and from `SOL_IPV6` for an
//!   IPv6 client), and sees the pod's own address as the peer, as under iptables `REDIRECT`;
//! - its original-source connection to the application (0x539, `IP_TRANSPARENT`, IPv4 and IPv6, bound to a
//!   remote pod's address) gets the return-path mark 0x111 from the connect hook, so the
//!   application's replies come back to it instead of leaving the pod.

use ztunnel_e2e::{
    TestEnv,
    process::Process,
    server::HttpServer,
    wait::{DEFAULT_TIMEOUT, wait_until},
    ztunnel::Daemon,
};

const FOREIGN_PROXY: &str = env!("CARGO_BIN_EXE_foreign-proxy");

#[test]
fn dual_stack_proxy_gets_original_destination_and_pod_source() -> anyhow::Result<()> {
    let env = TestEnv::new("istio_proxy_outbound")?;
    let node = env.node(1)?;
    let client = node.pod("client", 10)?;
    let server = node.pod("server", 20)?;
    let daemon = Daemon::start(&env, &[])?;
    env.enroll(&client)?;
    daemon.wait_serving(&client)?;
    daemon.stop()?;
    let proxy = Process::spawn(
        "foreign proxy",
        Some(&env.cgroup_procs()),
        Some(&client.netns),
        &[FOREIGN_PROXY, "outbound", "2"],
        env.scratch.join("foreign-proxy.log"),
    )?;
    wait_until(
        "the foreign proxy to listen on [::]:15001 in the client pod",
        DEFAULT_TIMEOUT,
        || proxy.log_text().contains("listening").then_some(()),
    )?;

    let ipv4_url = format!("http://{}:8080/", server.ip);
    let ipv6_url = format!("http://[{}]:8080/", server.ipv6);
    let mut bodies = Vec::new();
    for url in [&ipv4_url, &ipv6_url] {
        let curl = env.run_in_pod(&client, &["curl", "-sS", "-g", "--max-time", "5", url])?;
        let body = String::from_utf8_lossy(&curl.stdout).into_owned();
        println!(
            "curl {url} from client: {}, body {body:?}, stderr {:?}",
            curl.status,
            String::from_utf8_lossy(&curl.stderr)
        );
        bodies.push((curl.status.success(), body));
    }
    println!("foreign proxy log:\n{}", proxy.log_text());

    let (ipv4_ok, ipv4_body) = &bodies[0];
    assert!(ipv4_ok, "IPv4 curl through the foreign proxy failed");
    assert!(
        ipv4_body.contains(&format!("peer=[::ffff:{}]:", client.ip)),
        "the dual-stack listener did not see the pod's IPv4 address as the peer"
    );
    assert!(
        ipv4_body.contains("local=[::ffff:127.0.0.1]:15001"),
        "the IPv4 client was not accepted by the dual-stack listener as IPv4-mapped"
    );
    assert!(
        ipv4_body.contains(&format!("original_destination={}:8080", server.ip)),
        "SO_ORIGINAL_DST on the IPv4-mapped socket did not give the original destination"
    );
    let (ipv6_ok, ipv6_body) = &bodies[1];
    assert!(ipv6_ok, "IPv6 curl through the foreign proxy failed");
    assert!(
        ipv6_body.contains(&format!("peer=[{}]:", client.ipv6)),
        "the listener did not see the pod's IPv6 address as the peer"
    );
    assert!(
        ipv6_body.contains(&format!("original_destination=[{}]:8080", server.ipv6)),
        "IP6T_SO_ORIGINAL_DST did not give the original IPv6 destination"
    );
    Ok(())
}

#[test]
fn original_source_upstream_replies_return_to_the_proxy() -> anyhow::Result<()> {
    let env = TestEnv::new("istio_proxy_upstream")?;
    let node = env.node(1)?;
    let client = node.pod("client", 10)?;
    let app = node.pod("app", 20)?;
    let server_v4 = HttpServer::start(&app.netns, (app.ip, 8080).into(), "hello from app")?;
    let server_v6 = HttpServer::start(&app.netns, (app.ipv6, 8080).into(), "hello from app")?;
    let daemon = Daemon::start(&env, &[])?;
    env.enroll(&app)?;
    daemon.wait_serving(&app)?;
    daemon.stop()?;

    // The connect deadline is the proxy's own (5 s): without the return-path mark the app's
    // SYN-ACK leaves the pod towards the real client pod, and the connect never completes.
    let mut outcomes = Vec::new();
    for (source, destination, server) in [
        (
            client.ip.to_string(),
            format!("{}:8080", app.ip),
            &server_v4,
        ),
        (
            client.ipv6.to_string(),
            format!("[{}]:8080", app.ipv6),
            &server_v6,
        ),
    ] {
        let upstream = env.run_in_pod(&app, &[FOREIGN_PROXY, "upstream", &source, &destination])?;
        let output = String::from_utf8_lossy(&upstream.stdout).into_owned();
        // The server records a peer before it answers, so any answer means it is recorded.
        println!(
            "original-source upstream {source} -> {destination} in the app pod: {}, output {output:?}, stderr {:?}; app saw peers {:?}",
            upstream.status,
            String::from_utf8_lossy(&upstream.stderr),
            server.peers()
        );
        outcomes.push((source, upstream.status.success(), output));
    }
    for (source, succeeded, output) in outcomes {
        assert!(
            succeeded,
            "the original-source connection from {source} to the app did not complete"
        );
        assert!(
            output.starts_with("mark=0x111 "),
            "the connect hook did not give the socket from {source} the return-path mark"
        );
        let peer = if source.contains(':') {
            format!("[{source}]")
        } else {
            source.clone()
        };
        assert!(
            output.contains(&format!("hello from app peer={peer}:")),
            "the app did not see the remote client's address {source} as its peer"
        );
    }
    Ok(())
}
