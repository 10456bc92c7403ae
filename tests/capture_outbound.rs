//! Must-show (a): an enrolled pod's outbound TCP lands on its in-pod 15001 listener, which learns
//! the original destination from `getsockopt(SO_ORIGINAL_DST)` (answered by our hook from the
//! `orig_dst` map), and the
//! bytes reach the server and come back. A socket marked 0x539 in the same pod goes direct.

use ztunnel_e2e::{
    TestEnv,
    server::HttpServer,
    ztunnel::{Daemon, counters},
};

#[test]
fn outbound_connect_is_captured_with_its_original_destination() -> anyhow::Result<()> {
    let env = TestEnv::new("capture_outbound")?;
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

    let url = format!("http://{}:8080/", server_pod.ip);
    let curl = env.run_in_pod(&client, &["curl", "-sS", "--max-time", "5", &url])?;
    let body = String::from_utf8_lossy(&curl.stdout).into_owned();
    let destination = format!("{}:8080", server_pod.ip);
    let captured = daemon.wait_for_log_all(
        "the in-pod outbound listener to report the original destination",
        &[
            "outbound connection captured",
            "pod=client",
            // SO_ORIGINAL_DST, answered by the getsockopt hook from the orig_dst map (no NAT).
            &format!("original_destination={destination}"),
        ],
    )?;
    let kernel_log = daemon.wait_for_log_all(
        "the connect hook's aya-log record in the daemon's tracing output",
        &["ztunnel::ebpf", "connect: redirected to outbound listener"],
    )?;
    let after_curl = counters(&env, &client)?;
    println!("kernel log forwarded: {kernel_log}");
    println!(
        "curl {url} from client: status {}, body {body:?}, stderr {:?}",
        curl.status,
        String::from_utf8_lossy(&curl.stderr)
    );
    println!("daemon: {captured}");
    println!(
        "server saw peers {:?}; counters {after_curl:?}",
        server.peers()
    );
    assert!(curl.status.success(), "curl through the capture failed");
    assert_eq!(
        body,
        format!(
            "hello from server peer={}:{}\n",
            client.ip,
            server.peers()[0].port()
        )
    );
    assert_eq!(
        after_curl.outbound_redirected, 1,
        "exactly the one curl connect was redirected"
    );

    let marked_connect = env!("CARGO_BIN_EXE_marked-connect");
    let marked = env.run_in_pod(&client, &[marked_connect, "0x539", &destination])?;
    let marked_out = String::from_utf8_lossy(&marked.stdout).into_owned();
    let after_marked = counters(&env, &client)?;
    let captured_lines = daemon.log().matches("outbound connection captured").count();
    println!(
        "marked (0x539) connect from client: status {}, output {marked_out:?}, stderr {:?}",
        marked.status,
        String::from_utf8_lossy(&marked.stderr)
    );
    println!("counters after it {after_marked:?}; captured lines in daemon log: {captured_lines}");
    assert!(marked.status.success(), "the marked connect failed");
    assert!(
        marked_out.contains("hello from server"),
        "the marked connect did not reach the server"
    );
    assert!(
        marked_out.contains(&format!("peer={destination}")),
        "the marked socket is not connected to the server directly"
    );
    assert_eq!(
        after_marked.outbound_redirected, after_curl.outbound_redirected,
        "the marked connect was redirected"
    );
    assert!(
        after_marked.outbound_passed > after_curl.outbound_passed,
        "the marked connect was not counted as passed"
    );
    assert_eq!(
        captured_lines, 1,
        "the marked connect reached the outbound listener"
    );

    let mapped_destination = format!("[::ffff:{}]:8080", server_pod.ip);
    let mapped = env.run_in_pod(&client, &[marked_connect, "0", &mapped_destination])?;
    let mapped_out = String::from_utf8_lossy(&mapped.stdout).into_owned();
    let after_mapped = counters(&env, &client)?;
    println!(
        "dual-stack socket to {mapped_destination}: status {}, output {mapped_out:?}, stderr {:?}; counters {after_mapped:?}",
        mapped.status,
        String::from_utf8_lossy(&mapped.stderr)
    );
    assert!(
        mapped.status.success(),
        "the dual-stack connect through the capture failed"
    );
    assert!(
        mapped_out.contains("hello from server"),
        "the dual-stack connect did not reach the server"
    );
    assert_eq!(
        after_mapped.outbound_redirected,
        after_marked.outbound_redirected + 1,
        "the dual-stack connect was not redirected"
    );
    assert_eq!(
        daemon.log().matches("outbound connection captured").count(),
        2
    );
    daemon.stop()?;
    Ok(())
}
