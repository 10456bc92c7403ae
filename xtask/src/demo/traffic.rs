//! The traffic the demo sends, what each flow is expected to do, and the wait for the access
//! log to record it.

use std::{collections::BTreeMap, time::Duration};

use ztunnel_e2e::{
    cluster::{Cluster, ClusterPod},
    wait::wait_until,
};

use super::report::{AccessRecord, access_records};

/// What a flow does and what counts as success.
pub enum Expect {
    /// `curl` must return this page.
    Page(&'static str),
    /// `curl` must fail (a DENY policy names the client).
    Refused,
    /// `iperf3 -c` for this many seconds must complete.
    Iperf3 { seconds: u32 },
}

/// One flow from pod to pod.
pub struct Flow {
    pub from: &'static str,
    pub to: &'static str,
    pub what: &'static str,
    pub expect: Expect,
}

impl Flow {
    pub fn describe(&self) -> String {
        format!("{}: {} -> {}", self.what, self.from, self.to)
    }
}

/// The result of sending one flow.
pub struct Outcome {
    pub as_expected: bool,
    pub summary: String,
}

pub fn flows() -> Vec<Flow> {
    vec![
        Flow {
            from: "client",
            to: "web",
            what: "curl across nodes (HBONE)",
            expect: Expect::Page("hello from web\n"),
        },
        Flow {
            from: "neighbour",
            to: "web",
            what: "curl on the same node",
            expect: Expect::Page("hello from web\n"),
        },
        Flow {
            from: "client",
            to: "iperf",
            what: "iperf3 across nodes, 3 s",
            expect: Expect::Iperf3 { seconds: 3 },
        },
        Flow {
            from: "denied",
            to: "web",
            what: "curl from a service account a DENY policy names",
            expect: Expect::Refused,
        },
        Flow {
            from: "client",
            to: "legacy",
            what: "plaintext curl to the non-mesh pod",
            expect: Expect::Page("hello from legacy\n"),
        },
    ]
}

/// Sends `flow` with a real client inside the source pod.
pub fn send(
    cluster: &Cluster,
    pods: &BTreeMap<&str, ClusterPod>,
    flow: &Flow,
) -> anyhow::Result<Outcome> {
    let (from, to) = (&pods[flow.from], &pods[flow.to]);
    match flow.expect {
        Expect::Page(page) => curl(cluster, from, to, Some(page)),
        Expect::Refused => curl(cluster, from, to, None),
        Expect::Iperf3 { seconds } => iperf3(cluster, from, to, seconds),
    }
}

/// `curl http://<to>/`: it must return `page`, or fail if `page` is `None`.
fn curl(
    cluster: &Cluster,
    from: &ClusterPod,
    to: &ClusterPod,
    page: Option<&str>,
) -> anyhow::Result<Outcome> {
    let url = format!("http://{}/", to.ip);
    let output = cluster.run_in_pod(from, &["curl", "-sS", "--max-time", "5", &url])?;
    let body = String::from_utf8_lossy(&output.stdout).into_owned();
    let error = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    Ok(match page {
        Some(page) if output.status.success() && body == page => Outcome {
            as_expected: true,
            summary: format!("allowed, page {:?}", body.trim_end()),
        },
        Some(page) => Outcome {
            as_expected: false,
            summary: format!(
                "UNEXPECTED: wanted {:?}; curl {}: {error:?}, body {body:?}",
                page.trim_end(),
                output.status
            ),
        },
        None if output.status.success() => Outcome {
            as_expected: false,
            summary: format!("UNEXPECTED: allowed, body {body:?}"),
        },
        None => Outcome {
            as_expected: true,
            summary: format!("refused as expected (curl {}: {error})", output.status),
        },
    })
}

/// `iperf3 -c <to> -t <seconds>`: it must complete and move data.
fn iperf3(
    cluster: &Cluster,
    from: &ClusterPod,
    to: &ClusterPod,
    seconds: u32,
) -> anyhow::Result<Outcome> {
    let (ip, seconds) = (to.ip.to_string(), seconds.to_string());
    let output = cluster.run_in_pod(from, &["iperf3", "-c", &ip, "-t", &seconds, "-J"])?;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    let received = &json["end"]["sum_received"];
    let bytes = received["bytes"].as_u64().unwrap_or(0);
    Ok(if output.status.success() && bytes > 0 {
        Outcome {
            as_expected: true,
            summary: format!(
                "completed: {} MB at {:.0} Mbit/s",
                bytes / 1_000_000,
                received["bits_per_second"].as_f64().unwrap_or(0.0) / 1e6
            ),
        }
    } else {
        Outcome {
            as_expected: false,
            summary: format!(
                "UNEXPECTED: iperf3 {}: {} {}",
                output.status,
                json["error"].as_str().unwrap_or(""),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        }
    })
}

/// Waits until both nodes' access logs hold a record of every flow; a flow missing from them
/// is added to `failures`. Returns every record of both nodes.
pub fn wait_for_access_records(
    cluster: &Cluster,
    pods: &BTreeMap<&str, ClusterPod>,
    flows: &[Flow],
    failures: &mut Vec<String>,
) -> Vec<AccessRecord> {
    let ip = |name: &str| pods[name].ip.to_string();
    let read = || -> Vec<AccessRecord> {
        cluster
            .nodes
            .iter()
            .flat_map(|node| access_records(node.index, &node.ztunnel_log()))
            .collect()
    };
    let missing = |records: &[AccessRecord]| -> Vec<String> {
        flows
            .iter()
            .filter(|flow| {
                !records
                    .iter()
                    .any(|r| r.source_ip() == ip(flow.from) && r.destination_ip() == ip(flow.to))
            })
            .map(Flow::describe)
            .collect()
    };
    let _ = wait_until(
        "an access-log record of every flow",
        Duration::from_secs(10),
        || missing(&read()).is_empty().then_some(()),
    );
    let records = read();
    for flow in missing(&records) {
        failures.push(format!("{flow}: no access-log record on either node"));
    }
    records
}
