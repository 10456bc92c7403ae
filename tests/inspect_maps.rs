//! `ztunnel inspect` and `bpftool` read the pinned maps with the daemon stopped, and bpftool
//! prints named fields (the maps carry BTF).

use ztunnel_e2e::{
    TestEnv,
    env::checked,
    ztunnel::{Daemon, cli},
};

#[test]
fn pinned_maps_are_readable_with_named_fields_while_the_daemon_is_stopped() -> anyhow::Result<()> {
    let env = TestEnv::new("inspect_maps")?;
    let node = env.node(1)?;
    let pod = node.pod("app", 10)?;
    let daemon = Daemon::start(&env, &[])?;
    env.enroll(&pod)?;
    daemon.wait_serving(&pod)?;
    daemon.stop()?;

    let pods = cli(&env, &["inspect", "pods"])?;
    let workloads = cli(&env, &["inspect", "workloads", "--json"])?;
    let stats = cli(&env, &["inspect", "stats"])?;
    let config = cli(&env, &["inspect", "config", "--json"])?;
    let root = env.bpffs_root();
    let bpftool_pods = checked(
        std::process::Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(root.join("pods")),
    )?;
    let bpftool_workloads = checked(
        std::process::Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(root.join("workloads")),
    )?;
    let bpftool_config = checked(
        std::process::Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(root.join("config")),
    )?;
    println!(
        "inspect pods:\n{pods}\ninspect workloads --json:\n{workloads}\ninspect stats:\n{stats}\ninspect config --json:\n{config}"
    );
    println!(
        "bpftool pods:\n{bpftool_pods}\nbpftool workloads:\n{bpftool_workloads}\nbpftool config:\n{bpftool_config}"
    );

    assert!(
        pods.contains("default/app"),
        "inspect pods does not list the pod"
    );
    let workloads: serde_json::Value = serde_json::from_str(workloads.trim())?;
    let addresses: Vec<&str> = workloads
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|row| row["address"].as_str())
        .collect();
    assert!(
        addresses.contains(&pod.ip.to_string().as_str()),
        "inspect workloads does not show the pod's IPv4 address"
    );
    assert!(
        addresses.contains(&pod.ipv6.to_string().as_str()),
        "inspect workloads does not show the pod's IPv6 address"
    );
    assert!(
        stats.contains("default/app"),
        "inspect stats does not list the pod"
    );
    let config: serde_json::Value = serde_json::from_str(config.trim())?;
    assert_eq!(config["fail_mode"], "closed");
    assert_eq!(config["bypass_mark"], 0x539);
    for field in ["\"index\"", "\"flags\""] {
        assert!(
            bpftool_pods.contains(field),
            "bpftool pods dump lacks field {field}"
        );
    }
    for field in [
        "\"address\"",
        "\"family\"",
        "\"netns_cookie\"",
        "\"ifindex\"",
    ] {
        assert!(
            bpftool_workloads.contains(field),
            "bpftool workloads dump lacks field {field}"
        );
    }
    for field in ["\"fail_mode\"", "\"bypass_mark\"", "\"outbound_port\""] {
        assert!(
            bpftool_config.contains(field),
            "bpftool config dump lacks field {field}"
        );
    }
    Ok(())
}
