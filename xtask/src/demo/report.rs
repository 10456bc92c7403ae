//! What the demo shows: the flows from both nodes' access logs, and an excerpt of the metrics.

use std::collections::BTreeMap;

use crate::command::strip_ansi;

/// One access-log line (`ztunnel::access`, one per closed connection).
#[derive(Debug, Clone)]
pub struct AccessRecord {
    pub node: u8,
    pub fields: BTreeMap<String, String>,
}

impl AccessRecord {
    pub fn field(&self, key: &str) -> &str {
        self.fields.get(key).map(String::as_str).unwrap_or("-")
    }

    /// The source address without its port.
    pub fn source_ip(&self) -> &str {
        ip_of(self.field("src"))
    }

    /// The destination address without its port.
    pub fn destination_ip(&self) -> &str {
        ip_of(self.field("dst"))
    }
}

fn ip_of(address: &str) -> &str {
    address.rsplit_once(':').map_or(address, |(ip, _)| ip)
}

/// The access-log records of one node's ztunnel log.
pub fn access_records(node: u8, log: &str) -> Vec<AccessRecord> {
    log.lines()
        .map(strip_ansi)
        .filter(|line| line.contains("ztunnel::access"))
        .map(|line| AccessRecord {
            node,
            fields: key_values(&line),
        })
        .collect()
}

/// `key=value` and `key="quoted value"` pairs of a tracing fmt line.
fn key_values(line: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut rest = line;
    while let Some(equals) = rest.find('=') {
        let key = rest[..equals].rsplit(' ').next().unwrap_or("").to_owned();
        let after = &rest[equals + 1..];
        let (value, remainder) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"').unwrap_or(quoted.len());
                (&quoted[..end], quoted.get(end + 1..).unwrap_or(""))
            }
            None => {
                let end = after.find(' ').unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        fields.insert(key, value.to_owned());
        rest = remainder;
    }
    fields
}

/// `spiffe://cluster.local/ns/default/sa/client` → `default/client`.
fn short_identity(identity: &str) -> String {
    identity
        .split_once("/ns/")
        .and_then(|(_, rest)| rest.split_once("/sa/"))
        .map(|(namespace, account)| format!("{namespace}/{account}"))
        .unwrap_or_else(|| identity.to_owned())
}

/// The flow table: one row per access-log record, `names` maps pod IPs to pod names.
pub fn flow_table(records: &[AccessRecord], names: &BTreeMap<String, String>) -> Vec<String> {
    let name = |ip: &str| names.get(ip).cloned().unwrap_or_else(|| ip.to_owned());
    let header = [
        "node",
        "side",
        "source",
        "destination",
        "src identity",
        "dst identity",
        "mtls",
        "verdict",
        "sent",
        "received",
        "reason",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for record in records {
        let reason = record.field("reason");
        // The destination's ztunnel says "denied by policy"; the source's sees its 401 answer.
        let verdict = if reason == "ok" {
            "allowed"
        } else if reason.contains("denied by policy") || reason.contains("401 Unauthorized") {
            "DENIED"
        } else {
            "error"
        };
        let port = record.field("dst").rsplit_once(':').map_or("", |(_, p)| p);
        rows.push(vec![
            format!("n{}", record.node),
            record.field("direction").to_owned(),
            name(record.source_ip()),
            format!("{}:{port}", name(record.destination_ip())),
            short_identity(record.field("src_identity")),
            short_identity(record.field("dst_identity")),
            record.field("mtls").to_owned(),
            verdict.to_owned(),
            record.field("bytes_sent").to_owned(),
            record.field("bytes_received").to_owned(),
            reason.to_owned(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|column| rows.iter().map(|row| row[column].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|row| {
            row.iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        })
        .collect()
}

/// The `istio_tcp_*` samples of a Prometheus text page, one line each with the labels that tell
/// the flows apart (reporter, source and destination workload, response flags, security policy).
pub fn metrics_excerpt(page: &str) -> Vec<String> {
    const SHOWN: [&str; 5] = [
        "reporter",
        "source_workload",
        "destination_workload",
        "response_flags",
        "connection_security_policy",
    ];
    page.lines()
        .filter(|line| line.starts_with("istio_tcp_"))
        .filter_map(|line| {
            let (name, rest) = line.split_once('{')?;
            let (labels, value) = rest.rsplit_once("} ")?;
            let labels = labels
                .split("\",")
                .filter_map(|pair| pair.split_once("=\""))
                .filter(|(key, _)| SHOWN.contains(key))
                .map(|(key, value)| format!("{key}={}", value.trim_end_matches('"')))
                .collect::<Vec<_>>()
                .join(" ");
            Some(format!("{name:<36} {value:>12}  {labels}"))
        })
        .collect()
}

/// The first full sample of `metric` (all labels), to show the Istio label set as it is.
pub fn full_sample<'a>(page: &'a str, metric: &str) -> Option<&'a str> {
    page.lines().find(|line| line.starts_with(metric))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_access_line() {
        let line = "2026-11-26T23:00:00Z  INFO ztunnel::access: connection closed direction=\"outbound\" src=198.18.1.2:40000 dst=198.18.2.2:80 src_identity=spiffe://cluster.local/ns/default/sa/client dst_identity=- mtls=true bytes_sent=77 bytes_received=300 reason=\"denied by policy\"";
        let records = access_records(1, line);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].field("direction"), "outbound");
        assert_eq!(records[0].source_ip(), "198.18.1.2");
        assert_eq!(records[0].field("reason"), "denied by policy");
        assert_eq!(
            short_identity(records[0].field("src_identity")),
            "default/client"
        );
    }

    #[test]
    fn condenses_a_metric_sample() {
        let page = "# HELP x\nistio_tcp_connections_failed_total{reporter=\"destination\",source_workload=\"denied\",source_app=\"denied\",destination_workload=\"web\",response_flags=\"DENY\",connection_security_policy=\"mutual_tls\"} 1\n";
        assert_eq!(
            metrics_excerpt(page),
            vec![format!(
                "{:<36} {:>12}  reporter=destination source_workload=denied destination_workload=web response_flags=DENY connection_security_policy=mutual_tls",
                "istio_tcp_connections_failed_total", "1"
            )]
        );
    }
}
