//! `ztunnel config check FILE`: what a file would put in force, or why it would be refused.

use std::{fmt::Write as _, path::Path};

use super::{ConfigError, load_state, reload::summary};
use crate::state::State;

/// Loads `path` as the daemon would and describes the result for a person.
pub fn check(path: &Path) -> Result<String, ConfigError> {
    Ok(describe(&load_state(path)?))
}

/// One line per workload, service and policy, under a summary line.
pub fn describe(state: &State) -> String {
    let mut out = format!("configuration OK: {}\n", summary(state));
    if state.workloads().next().is_some() {
        out.push_str("workloads:\n");
    }
    for workload in state.workloads() {
        let ips: Vec<String> = workload
            .workload_ips
            .iter()
            .map(ToString::to_string)
            .collect();
        let _ = write!(
            out,
            "  {}  {}  [{}]  {}",
            workload.key(),
            workload.protocol,
            ips.join(", "),
            workload.identity()
        );
        if !workload.node.is_empty() {
            let _ = write!(out, "  node={}", workload.node);
        }
        if let Some(waypoint) = &workload.waypoint {
            let _ = write!(
                out,
                "  waypoint={}:{}",
                waypoint.destination, waypoint.hbone_mtls_port
            );
        }
        out.push('\n');
    }
    if state.services().next().is_some() {
        out.push_str("services:\n");
    }
    for service in state.services() {
        let vips: Vec<String> = service.vips.iter().map(ToString::to_string).collect();
        let ports: Vec<String> = service
            .ports
            .iter()
            .map(|(port, target)| format!("{port}->{target}"))
            .collect();
        let _ = writeln!(
            out,
            "  {}  vips=[{}]  ports=[{}]  endpoints={}",
            service.key(),
            vips.join(", "),
            ports.join(", "),
            service.endpoints.len()
        );
    }
    if state.policies().next().is_some() {
        out.push_str("policies:\n");
    }
    for policy in state.policies() {
        let _ = writeln!(
            out,
            "  {}  {:?} {:?}  {} rule(s){}",
            policy.key(),
            policy.scope,
            policy.action,
            policy.rules.len(),
            if policy.dry_run { "  (dry run)" } else { "" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/config/testdata")
            .join(name)
    }

    #[test]
    fn describes_a_good_file() {
        let report = check(&testdata("istio-local.yaml")).unwrap();
        assert!(
            report.starts_with("configuration OK: 5 workloads, 3 services, 3 policies\n"),
            "{report}"
        );
        assert!(report.contains("  ns2/echo-1  HBONE  [198.18.2.10, 2001:db8::2:10]  spiffe://example.org/ns/ns2/sa/echo  node=node-b  waypoint=ns2/waypoint.ns2.svc.cluster.local:15008\n"), "{report}");
        assert!(report.contains("  ns2/echo.ns2.svc.cluster.local  vips=[/198.19.0.10]  ports=[80->8080]  endpoints=2\n"), "{report}");
        assert!(
            report.contains("  ns2/only-sleep  WorkloadSelector Allow  1 rule(s)\n"),
            "{report}"
        );
    }

    #[test]
    fn reports_why_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.yaml");
        std::fs::write(
            &path,
            "services:\n- name: s\n  namespace: ns\n  hostname: h\n  loadBalancer: {}\n",
        )
        .unwrap();
        let error = check(&path).unwrap_err().to_string();
        assert!(
            error.contains("line 5") && error.contains("`loadBalancer`"),
            "{error}"
        );
    }
}
