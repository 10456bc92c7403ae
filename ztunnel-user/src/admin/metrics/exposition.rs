//! The page Prometheus scrapes: every family described from the start.
//!
//! prometheus-client leaves out a family that has no labelled series yet, so before the first
//! connection `/metrics` was empty and dashboards and alerts saw "no data" instead of zero.
//! Series whose labels are known in advance are created at zero ([`super::Metrics::new`]);
//! the connection families, whose labels name workloads, get their `HELP` and `TYPE` lines
//! (OpenMetrics allows a family with no series) until their first series exists.

/// Adds the `HELP`/`TYPE` lines of each counter family in `families` (prefix, (name, help))
/// that `text`, an OpenMetrics exposition, does not describe, in front of its `# EOF`.
pub fn describe_empty_families(text: &mut String, families: &[(&str, (&str, &str))]) {
    let mut missing = String::new();
    for (prefix, (name, help)) in families {
        let full_name = format!("{prefix}_{name}");
        if !text.contains(&format!("# TYPE {full_name} ")) {
            missing.push_str(&format!(
                "# HELP {full_name} {help}.\n# TYPE {full_name} counter\n"
            ));
        }
    }
    let end = text.rfind("# EOF").unwrap_or(text.len());
    text.insert_str(end, &missing);
}
