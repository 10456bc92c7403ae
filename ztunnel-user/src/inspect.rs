//! `ztunnel inspect pods|workloads|stats|config`: reads the pinned maps directly (works with the
//! daemon stopped). Names come from the enrolled set in the run dir when it is readable.

use std::{net::IpAddr, path::Path};

use serde::Serialize;
use ztunnel_common::maps::WORKLOADS_MAP;

use crate::{
    ebpf::{
        EbpfError, PinLayout, PinnedMaps,
        maps::{FailMode, KernelLogLevel, socket_ip},
    },
    inpod::state::read_enrolled,
};

/// What to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// `pods`.
    Pods,
    /// `workloads`.
    Workloads,
    /// `stats`.
    Stats,
    /// `config`.
    Config,
}

/// Failures of `inspect`.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// Maps cannot be read.
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    /// JSON output failed.
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
}

#[derive(Debug, Serialize)]
struct PodRow {
    netns_cookie: u64,
    index: u32,
    flags: u32,
    namespace: Option<String>,
    name: Option<String>,
}

#[derive(Debug, Serialize)]
struct WorkloadRow {
    address: Option<IpAddr>,
    netns_cookie: u64,
    ifindex: u32,
    flags: u32,
}

#[derive(Debug, Serialize)]
struct StatsRow {
    netns_cookie: u64,
    index: u32,
    name: Option<String>,
    outbound_redirected: u64,
    outbound_passed: u64,
    outbound_refused: u64,
    inbound_redirected: u64,
    inbound_passed: u64,
    inbound_refused: u64,
}

#[derive(Debug, Serialize)]
struct ConfigView {
    fail_mode: String,
    bypass_mark: u32,
    upstream_mark: u32,
    outbound_port: u16,
    inbound_plaintext_port: u16,
    hbone_port: u16,
    log_level: String,
    /// `max_entries` of `pods`: how many pods this node can enroll.
    pods_capacity: u32,
    /// How many are enrolled.
    pods_enrolled: usize,
}

/// Renders `view` of the maps pinned under `layout` as a table, or JSON when `json`.
pub fn render(
    layout: &PinLayout,
    run_dir: &Path,
    view: View,
    json: bool,
) -> Result<String, InspectError> {
    let maps = PinnedMaps::open(layout)?;
    let enrolled = read_enrolled(run_dir).unwrap_or_default();
    let name_of = |cookie: u64| {
        enrolled
            .pods
            .iter()
            .find(|pod| pod.netns_cookie == cookie)
            .map(|pod| (pod.namespace.clone(), pod.name.clone()))
    };
    let mut pods: Vec<(u64, ztunnel_common::PodRecord)> =
        maps.pods.iter().filter_map(Result::ok).collect();
    pods.sort_by_key(|(_, record)| record.index);
    match view {
        View::Pods => {
            let rows: Vec<PodRow> = pods
                .iter()
                .map(|(cookie, record)| {
                    let names = name_of(*cookie);
                    PodRow {
                        netns_cookie: *cookie,
                        index: record.index,
                        flags: record.flags,
                        namespace: names.clone().map(|n| n.0),
                        name: names.map(|n| n.1),
                    }
                })
                .collect();
            if json {
                return Ok(serde_json::to_string_pretty(&rows)?);
            }
            let mut out = format!(
                "{:<20} {:>5} {:>5}  {}\n",
                "NETNS_COOKIE", "INDEX", "FLAGS", "POD"
            );
            for row in rows {
                let pod = match (row.namespace, row.name) {
                    (Some(namespace), Some(name)) => format!("{namespace}/{name}"),
                    _ => "-".into(),
                };
                out += &format!(
                    "{:<20} {:>5} {:>#5x}  {}\n",
                    row.netns_cookie, row.index, row.flags, pod
                );
            }
            Ok(out)
        }
        View::Workloads => {
            let rows: Vec<WorkloadRow> = maps
                .workloads
                .iter()
                .filter_map(Result::ok)
                .map(|(key, record)| WorkloadRow {
                    address: socket_ip(&key.address, key.family),
                    netns_cookie: record.netns_cookie,
                    ifindex: record.ifindex,
                    flags: record.flags,
                })
                .collect();
            if json {
                return Ok(serde_json::to_string_pretty(&rows)?);
            }
            let mut out = format!(
                "{:<40} {:<20} {:>7} {:>5}\n",
                "ADDRESS", "NETNS_COOKIE", "IFINDEX", "FLAGS"
            );
            for row in rows {
                let address = row
                    .address
                    .map_or_else(|| format!("<bad {WORKLOADS_MAP} key>"), |a| a.to_string());
                out += &format!(
                    "{:<40} {:<20} {:>7} {:>#5x}\n",
                    address, row.netns_cookie, row.ifindex, row.flags
                );
            }
            Ok(out)
        }
        View::Stats => {
            let mut rows = Vec::new();
            for (cookie, record) in &pods {
                let counters = maps.pod_counters(record.index)?;
                rows.push(StatsRow {
                    netns_cookie: *cookie,
                    index: record.index,
                    name: name_of(*cookie).map(|(namespace, name)| format!("{namespace}/{name}")),
                    outbound_redirected: counters.outbound_redirected,
                    outbound_passed: counters.outbound_passed,
                    outbound_refused: counters.outbound_refused,
                    inbound_redirected: counters.inbound_redirected,
                    inbound_passed: counters.inbound_passed,
                    inbound_refused: counters.inbound_refused,
                });
            }
            if json {
                return Ok(serde_json::to_string_pretty(&rows)?);
            }
            let mut out = format!(
                "{:<24} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
                "POD", "OUT_RED", "OUT_PASS", "OUT_REF", "IN_RED", "IN_PASS", "IN_REF"
            );
            for row in rows {
                let pod = row.name.unwrap_or_else(|| row.netns_cookie.to_string());
                out += &format!(
                    "{:<24} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
                    pod,
                    row.outbound_redirected,
                    row.outbound_passed,
                    row.outbound_refused,
                    row.inbound_redirected,
                    row.inbound_passed,
                    row.inbound_refused
                );
            }
            Ok(out)
        }
        View::Config => {
            let record = maps.config()?;
            let view = ConfigView {
                fail_mode: FailMode::from_record_value(record.fail_mode).to_string(),
                bypass_mark: record.bypass_mark,
                upstream_mark: record.upstream_mark,
                outbound_port: record.outbound_port,
                inbound_plaintext_port: record.inbound_plaintext_port,
                hbone_port: record.hbone_port,
                log_level: KernelLogLevel::from_record_value(record.log_level).to_string(),
                pods_capacity: crate::ebpf::maps::pod_capacity(layout)?,
                pods_enrolled: pods.len(),
            };
            if json {
                return Ok(serde_json::to_string_pretty(&view)?);
            }
            Ok(format!(
                "fail_mode              {}\nbypass_mark            {:#x}\nupstream_mark          {:#x}\noutbound_port          {}\ninbound_plaintext_port {}\nhbone_port             {}\nlog_level              {}\npods                   {}/{}\n",
                view.fail_mode,
                view.bypass_mark,
                view.upstream_mark,
                view.outbound_port,
                view.inbound_plaintext_port,
                view.hbone_port,
                view.log_level,
                view.pods_enrolled,
                view.pods_capacity
            ))
        }
    }
}
