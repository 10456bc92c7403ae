//! Medians and ranges, the terminal table, the JSON file and the SVG chart.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde_json::json;

use crate::{Plan, Samples};

/// The scenarios in column order (relays is the reference: no TLS, no HTTP/2, no capture).
const SCENARIOS: [&str; 4] = ["direct", "ebpf", "iptables", "relays"];

/// Figures in table order: key, label, unit.
const FIGURES: [(&str, &str, &str); 14] = [
    ("throughput_gbit_s", "one-stream throughput", "Gbit/s"),
    ("rr_1b_p50_us", "req/resp 1 B p50", "µs"),
    ("rr_1b_p99_us", "req/resp 1 B p99", "µs"),
    ("rr_1kib_p50_us", "req/resp 1 KiB p50", "µs"),
    ("rr_1kib_p99_us", "req/resp 1 KiB p99", "µs"),
    ("connections_per_s", "new connections", "/s"),
    ("connect_p50_us", "connect+exchange+close p50", "µs"),
    ("connect_p99_us", "connect+exchange+close p99", "µs"),
    ("connect_failures", "failed connections", ""),
    ("cpu_s_per_gib", "ztunnel/relay CPU per GiB", "s"),
    (
        "cpu_s_per_10k_connections",
        "ztunnel/relay CPU per 10k conns",
        "s",
    ),
    ("rss_idle_client_node_mib", "RSS idle, client node", "MiB"),
    ("rss_idle_server_node_mib", "RSS idle, server node", "MiB"),
    (
        "rss_open_tunnels_mib",
        "RSS, 1,000 open tunnels (max)",
        "MiB",
    ),
];

/// Median, minimum and maximum of one figure over the rounds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Stat {
    median: f64,
    min: f64,
    max: f64,
    samples: usize,
}

/// Scenario → figure → statistics.
pub type Summary = BTreeMap<String, BTreeMap<String, Stat>>;

fn stat(values: &[f64]) -> Option<Stat> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    let median = if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    };
    Some(Stat {
        median,
        min: sorted[0],
        max: sorted[sorted.len() - 1],
        samples: sorted.len(),
    })
}

/// Medians and ranges of every figure.
pub fn summarize(samples: &Samples) -> Summary {
    samples
        .iter()
        .map(|(scenario, figures)| {
            let stats = figures
                .iter()
                .filter_map(|(figure, values)| stat(values).map(|s| (figure.to_string(), s)))
                .collect();
            (scenario.to_string(), stats)
        })
        .collect()
}

fn median(summary: &Summary, scenario: &str, figure: &str) -> Option<f64> {
    summary.get(scenario)?.get(figure).map(|stat| stat.median)
}

/// The issue's targets as (label, value, target, met?) — reported, never asserted.
fn targets(summary: &Summary) -> Vec<(String, Option<f64>, String)> {
    let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    vec![
        (
            "new-connection rate ebpf/iptables".into(),
            ratio(
                median(summary, "ebpf", "connections_per_s"),
                median(summary, "iptables", "connections_per_s"),
            ),
            "≥ 1.2".into(),
        ),
        (
            "one-stream throughput ebpf/direct".into(),
            throughput_of_direct(summary, "ebpf"),
            "≥ 0.40".into(),
        ),
        (
            "added req/resp 1 B p50 ebpf−direct (µs)".into(),
            added_latency(summary, "ebpf"),
            "≤ 60".into(),
        ),
        (
            "ebpf RSS idle, larger node (MiB)".into(),
            median(summary, "ebpf", "rss_idle_client_node_mib")
                .zip(median(summary, "ebpf", "rss_idle_server_node_mib"))
                .map(|(a, b)| a.max(b)),
            "≤ 20".into(),
        ),
        (
            "ebpf RSS with 1,000 open tunnels (MiB)".into(),
            median(summary, "ebpf", "rss_open_tunnels_mib"),
            "≤ 40".into(),
        ),
    ]
}

/// The same figures for the reference relays: what the hops and the cipher alone allow.
fn references(summary: &Summary) -> Vec<(String, Option<f64>)> {
    vec![
        (
            "one-stream throughput relays/direct".into(),
            throughput_of_direct(summary, "relays"),
        ),
        (
            "added req/resp 1 B p50 relays−direct (µs)".into(),
            added_latency(summary, "relays"),
        ),
    ]
}

/// `scenario`'s one-stream throughput as a fraction of direct's.
fn throughput_of_direct(summary: &Summary, scenario: &str) -> Option<f64> {
    Some(
        median(summary, scenario, "throughput_gbit_s")?
            / median(summary, "direct", "throughput_gbit_s")?,
    )
}

/// What `scenario` adds to direct's 1-byte round trip (p50), in µs.
fn added_latency(summary: &Summary, scenario: &str) -> Option<f64> {
    Some(median(summary, scenario, "rr_1b_p50_us")? - median(summary, "direct", "rr_1b_p50_us")?)
}

/// The terminal table: median [min–max] per scenario, then the targets and references.
pub fn print_table(summary: &Summary, plan: &Plan) {
    println!();
    print!("{:<32}", "figure (median [min–max])");
    for scenario in SCENARIOS {
        print!(" {scenario:>24}");
    }
    println!();
    for (key, label, unit) in FIGURES.iter() {
        let cells: Vec<String> = SCENARIOS
            .iter()
            .map(
                |scenario| match summary.get(*scenario).and_then(|f| f.get(*key)) {
                    Some(stat) => format!(
                        "{} [{}–{}]",
                        short(stat.median),
                        short(stat.min),
                        short(stat.max)
                    ),
                    None => "-".into(),
                },
            )
            .collect();
        print!(
            "{:<32}",
            format!("{label} ({unit})").trim_end_matches(" ()")
        );
        for cell in cells {
            print!(" {cell:>24}");
        }
        println!();
    }
    println!(
        "\ntargets (figures, not assertions; {} rounds):",
        plan.rounds
    );
    for (label, value, target) in targets(summary) {
        let value = value.map_or("-".to_owned(), short);
        println!("  {label:<44} {value:>8}   target {target}");
    }
    println!("references (two relays: AES-256-GCM records, no TLS, no HTTP/2, no capture):");
    for (label, value) in references(summary) {
        let value = value.map_or("-".to_owned(), short);
        println!("  {label:<44} {value:>8}");
    }
}

fn short(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// Writes the summary, the raw samples, the plan and the targets.
pub fn write_json(
    path: &Path,
    summary: &Summary,
    samples: &Samples,
    plan: &Plan,
    quick: bool,
) -> anyhow::Result<()> {
    let targets: Vec<_> = targets(summary)
        .into_iter()
        .map(|(label, value, target)| json!({"figure": label, "value": value, "target": target}))
        .collect();
    let references: Vec<_> = references(summary)
        .into_iter()
        .map(|(label, value)| json!({"figure": label, "value": value}))
        .collect();
    let report = json!({
        "quick": quick,
        "plan": plan,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "summary": summary,
        "samples": samples,
        "targets": targets,
        "references": references,
    });
    std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    Ok(())
}

/// One panel per figure, a bar per scenario (median) with its min–max range, as plain SVG.
pub fn write_svg(path: &Path, summary: &Summary) -> anyhow::Result<()> {
    let panels: Vec<_> = FIGURES
        .iter()
        .filter(|(key, ..)| *key != "connect_failures")
        .collect();
    let (columns, width, height) = (4usize, 300.0, 210.0);
    let rows = panels.len().div_ceil(columns);
    let colors = ["#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c"];
    let mut svg = String::new();
    let total_width = width * columns as f64;
    let total_height = height * rows as f64 + 40.0;
    writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total_width}" height="{total_height}" font-family="sans-serif" font-size="11">"#
    )?;
    writeln!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="22" font-size="15">ztunnel pod-to-pod across two nodes: median bars, min–max whiskers</text>"#
    )?;
    for (position, color) in colors.iter().enumerate() {
        let x = total_width - 440.0 + position as f64 * 105.0;
        writeln!(
            svg,
            r#"<rect x="{x}" y="10" width="12" height="12" fill="{color}"/><text x="{}" y="21">{}</text>"#,
            x + 16.0,
            SCENARIOS[position]
        )?;
    }
    for (index, (key, label, unit)) in panels.iter().enumerate() {
        let left = (index % columns) as f64 * width;
        let top = 40.0 + (index / columns) as f64 * height;
        let stats: Vec<Option<Stat>> = SCENARIOS
            .iter()
            .map(|scenario| summary.get(*scenario).and_then(|f| f.get(*key)).copied())
            .collect();
        let top_value = stats
            .iter()
            .flatten()
            .map(|stat| stat.max)
            .fold(0.0_f64, f64::max)
            .max(f64::MIN_POSITIVE)
            * 1.15;
        let (plot_top, plot_bottom) = (top + 30.0, top + height - 30.0);
        let scale = |value: f64| plot_bottom - (value / top_value) * (plot_bottom - plot_top);
        writeln!(
            svg,
            r#"<text x="{}" y="{}" font-weight="bold">{label} ({unit})</text>"#,
            left + 10.0,
            top + 18.0
        )?;
        writeln!(
            svg,
            r##"<line x1="{0}" y1="{plot_bottom}" x2="{1}" y2="{plot_bottom}" stroke="#333"/>"##,
            left + 20.0,
            left + width - 20.0
        )?;
        for (position, stat) in stats.iter().enumerate() {
            let x = left + 25.0 + position as f64 * 65.0;
            let Some(stat) = stat else {
                writeln!(
                    svg,
                    r##"<text x="{}" y="{}" text-anchor="middle" fill="#999">n/a</text>"##,
                    x + 25.0,
                    plot_bottom - 5.0
                )?;
                continue;
            };
            let y = scale(stat.median);
            writeln!(
                svg,
                r#"<rect x="{}" y="{y:.1}" width="40" height="{:.1}" fill="{}"/>"#,
                x + 5.0,
                plot_bottom - y,
                colors[position]
            )?;
            writeln!(
                svg,
                r#"<line x1="{0}" y1="{1:.1}" x2="{0}" y2="{2:.1}" stroke="black"/>"#,
                x + 25.0,
                scale(stat.min),
                scale(stat.max)
            )?;
            writeln!(
                svg,
                r#"<text x="{}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x + 25.0,
                scale(stat.max) - 4.0,
                short(stat.median)
            )?;
            writeln!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
                x + 25.0,
                plot_bottom + 14.0,
                SCENARIOS[position]
            )?;
        }
    }
    writeln!(svg, "</svg>")?;
    std::fs::write(path, svg)?;
    Ok(())
}
