//! The IPv6 path: connect6 rewrites to [::1]:15001 from the pod's own address (the listener's
//! peer is the pod, as under ip6tables `REDIRECT`), `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)`
//! and the map agree on the original destination, and TC steers inbound IPv6 to [::]:15006.

use ztunnel_e2e::{
    TestEnv, process,
    server::HttpServer,
    ztunnel::{Daemon, counters},
};

#[test]
fn ipv6_outbound_and_inbound_are_captured() -> anyhow::Result<()> {
    let env = TestEnv::new("capture_ipv6")?;
    let node = env.node(1)?;
    let client = node.pod("client", 10)?;
    let server_pod = node.pod("server", 20)?;
    let server = HttpServer::start(
        &server_pod.netns,
        (server_pod.ipv6, 8080).into(),
        "hello from server",
    )?;
    let app_server = HttpServer::start(
        &client.netns,
        (client.ipv6, 9090).into(),
        "hello from client app",
    )?;
    let daemon = Daemon::start(&env, &[])?;
    env.enroll(&client)?;
    daemon.wait_serving(&client)?;

    let url = format!("http://[{}]:8080/", server_pod.ipv6);
    let curl = env.run_in_pod(&client, &["curl", "-sS", "-g", "--max-time", "5", &url])?;
    let body = String::from_utf8_lossy(&curl.stdout).into_owned();
    let destination = format!("[{}]:8080", server_pod.ipv6);
    let captured = daemon.wait_for_log_all(
        "the outbound listener on [::1]:15001 to report the IPv6 original destination",
        &[
            "outbound connection captured",
            "pod=client",
            &format!("peer=[{}]:", client.ipv6),
            // SO_ORIGINAL_DST, answered by the getsockopt hook from the orig_dst map (no NAT).
            &format!("original_destination={destination}"),
        ],
    )?;
    println!(
        "curl {url}: {} body {body:?} stderr {:?}\ndaemon: {captured}\nserver peers {:?}",
        curl.status,
        String::from_utf8_lossy(&curl.stderr),
        server.peers()
    );
    assert!(
        curl.status.success(),
        "IPv6 curl through the capture failed"
    );
    assert!(
        body.starts_with(&format!("hello from server peer=[{}]:", client.ipv6)),
        "the server did not see the client's IPv6 address"
    );

    let inbound_url = format!("http://[{}]:9090/", client.ipv6);
    let inbound = process::run(
        None,
        Some(&server_pod.netns),
        &["curl", "-sS", "-g", "--max-time", "5", &inbound_url],
    )?;
    let inbound_body = String::from_utf8_lossy(&inbound.stdout).into_owned();
    let steered = daemon.wait_for_log_all(
        "the inbound listener on [::]:15006 to accept the IPv6 connection",
        &[
            "inbound plaintext connection captured",
            "pod=client",
            &format!("original_destination=[{}]:9090", client.ipv6),
        ],
    )?;
    let final_counters = counters(&env, &client)?;
    println!(
        "curl {inbound_url} from server pod: {} body {inbound_body:?}\ndaemon: {steered}\ncounters {final_counters:?}; app peers {:?}",
        inbound.status,
        app_server.peers()
    );
    assert!(inbound.status.success(), "IPv6 inbound curl failed");
    assert!(
        inbound_body.starts_with(&format!(
            "hello from client app peer=[{}]:",
            server_pod.ipv6
        )),
        "the app did not answer, or did not see the client's own address"
    );
    assert_eq!(final_counters.outbound_redirected, 1);
    assert_eq!(final_counters.inbound_redirected, 1);
    daemon.stop()?;
    Ok(())
}
