//! Must-show (b): plaintext TCP to an enrolled pod's IP lands on the in-pod 15006 listener with
//! the original destination as its local address (no NAT), and reaches the application, which
//! sees the client's own address as its peer (transparent upstream + in-pod fwmark routing); a
//! connection to the pod's HBONE port 15008 is not diverted.

use ztunnel_e2e::{
    TestEnv, process,
    server::HttpServer,
    ztunnel::{Daemon, counters},
};

#[test]
fn plaintext_inbound_lands_on_15006_and_hbone_passes() -> anyhow::Result<()> {
    let env = TestEnv::new("capture_inbound")?;
    let node = env.node(1)?;
    let app = node.pod("app", 10)?;
    let client = node.pod("client", 20)?;
    let app_server = HttpServer::start(&app.netns, (app.ip, 8080).into(), "hello from app")?;
    let daemon = Daemon::start(&env, &[])?;
    env.enroll(&app)?;
    daemon.wait_serving(&app)?;

    let url = format!("http://{}:8080/", app.ip);
    let curl = process::run(
        None,
        Some(&client.netns),
        &["curl", "-sS", "--max-time", "5", &url],
    )?;
    let body = String::from_utf8_lossy(&curl.stdout).into_owned();
    let captured = daemon.wait_for_log_all(
        "the inbound plaintext listener to accept the connection",
        &[
            "inbound plaintext connection captured",
            "pod=app",
            &format!("peer={}:", client.ip),
            &format!("original_destination={}:8080", app.ip),
        ],
    )?;
    let after_plaintext = counters(&env, &app)?;
    println!(
        "curl {url} from client: status {}, body {body:?}, stderr {:?}",
        curl.status,
        String::from_utf8_lossy(&curl.stderr)
    );
    println!("daemon: {captured}");
    println!(
        "app saw peers {:?}; counters {after_plaintext:?}",
        app_server.peers()
    );
    assert!(
        curl.status.success(),
        "curl to the pod through 15006 failed"
    );
    assert!(
        body.starts_with(&format!("hello from app peer={}:", client.ip)),
        "the application did not answer, or did not see the client's own address: {body:?}"
    );
    assert_eq!(
        after_plaintext.inbound_redirected, 1,
        "exactly the one SYN was steered to 15006"
    );

    let hbone_target = app.ip.to_string();
    let hbone = process::run(
        None,
        Some(&client.netns),
        &["nc", "-z", "-w", "5", &hbone_target, "15008"],
    )?;
    // `nc -z` closes without a ClientHello: the pod's HBONE listener logs the handshake it
    // could not finish (accepted connections are not logged at info, the access log is enough).
    let accepted = daemon.wait_for_log_all(
        "the HBONE listener to accept the connection",
        &[
            "HBONE connection refused",
            &format!("peer={}:", client.ip),
            "reason=\"tls_io_error\"",
        ],
    )?;
    let after_hbone = counters(&env, &app)?;
    println!(
        "nc -z {hbone_target} 15008 from client: status {}; daemon: {accepted}; counters {after_hbone:?}",
        hbone.status
    );
    assert!(hbone.status.success(), "connect to pod_ip:15008 failed");
    assert_eq!(
        after_hbone.inbound_redirected, after_plaintext.inbound_redirected,
        "the 15008 connection was diverted"
    );
    assert_eq!(
        after_hbone.inbound_passed,
        after_plaintext.inbound_passed + 1,
        "the 15008 SYN was not counted as passed"
    );
    daemon.stop()?;
    Ok(())
}
