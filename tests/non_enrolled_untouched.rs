//! Must-show (c): a process in a netns that is not enrolled, running in the same cgroup as the
//! hooks, connects directly and moves no counter.

use ztunnel_e2e::{
    TestEnv,
    server::HttpServer,
    ztunnel::{Daemon, cli, counters},
};

#[test]
fn non_enrolled_netns_in_the_same_cgroup_is_untouched() -> anyhow::Result<()> {
    let env = TestEnv::new("non_enrolled_untouched")?;
    let node = env.node(1)?;
    let enrolled = node.pod("enrolled", 10)?;
    let bystander = node.pod("bystander", 11)?;
    let server_pod = node.pod("server", 20)?;
    let server = HttpServer::start(
        &server_pod.netns,
        (server_pod.ip, 8080).into(),
        "hello from server",
    )?;
    let daemon = Daemon::start(&env, &[])?;
    env.enroll(&enrolled)?;
    daemon.wait_serving(&enrolled)?;
    let before = counters(&env, &enrolled)?;
    let stats_before = cli(&env, &["inspect", "stats", "--json"])?;

    let url = format!("http://{}:8080/", server_pod.ip);
    let curl = env.run_in_pod(&bystander, &["curl", "-sS", "--max-time", "5", &url])?;
    let body = String::from_utf8_lossy(&curl.stdout).into_owned();
    let after = counters(&env, &enrolled)?;
    let stats_after = cli(&env, &["inspect", "stats", "--json"])?;
    println!(
        "curl {url} from the non-enrolled netns (in the test cgroup): status {}, body {body:?}",
        curl.status
    );
    println!("server saw peers {:?}", server.peers());
    println!("stats before {stats_before}\nstats after {stats_after}");
    assert!(curl.status.success(), "the bystander's curl failed");
    assert_eq!(server.peers().len(), 1);
    assert_eq!(
        server.peers()[0].ip(),
        std::net::IpAddr::V4(bystander.ip),
        "the server did not see the bystander directly"
    );
    assert_eq!(before, after, "a counter moved");
    assert_eq!(stats_before, stats_after, "the stats map changed");
    assert!(
        !daemon.log().contains("outbound connection captured"),
        "the bystander was captured"
    );
    daemon.stop()?;
    Ok(())
}
