//! Routing inside a pod's netns so the inbound side can keep the client's address.
//!
//! ztunnel connects to the pod's application from the original (remote) source address
//! (`IP_TRANSPARENT`, socket mark [`UPSTREAM_MARK`]). The application's replies go to that
//! remote address, so without help they would leave the pod. With `tcp_fwmark_accept` the
//! application's accepted socket inherits the SYN's mark, and an `ip rule` sends marked packets
//! to a table whose only route is `local default`: the replies come back to ztunnel's socket.
//! No iptables, no conntrack. ztunnel's own outbound sockets carry [`BYPASS_MARK`], which this
//! rule never matches, so they still leave the pod.

use std::process::Command;

use ztunnel_common::constants::{
    BYPASS_MARK, UPSTREAM_MARK, UPSTREAM_ROUTE_TABLE, UPSTREAM_RULE_PRIORITY,
};

use super::{InpodError, netns::Netns};

// The rule matches the whole mark value (no mask). BYPASS_MARK (0x539) contains every bit of
// UPSTREAM_MARK (0x111), so a masked rule such as `fwmark 0x111/0x111` would also catch
// ztunnel's outbound sockets and route them back into the pod; an exact match never does.
const _: () = assert!(UPSTREAM_MARK != BYPASS_MARK);

/// Sets the pod netns up for transparent upstream connections; idempotent.
/// Needs `CAP_NET_ADMIN` and iproute2's `ip`. Minimum kernel 3.6 (`tcp_fwmark_accept`).
pub fn prepare(netns: &Netns) -> Result<(), InpodError> {
    let failed = |action: String| move |source| InpodError::Io { action, source };
    netns
        .run(|| {
            std::fs::write("/proc/sys/net/ipv4/tcp_fwmark_accept", "1")?;
            for family in ["-4", "-6"] {
                ensure_rule(family)?;
                let default = if family == "-4" { "0.0.0.0/0" } else { "::/0" };
                ip(&[
                    family,
                    "route",
                    "replace",
                    "local",
                    default,
                    "dev",
                    "lo",
                    "table",
                    &UPSTREAM_ROUTE_TABLE.to_string(),
                ])?;
            }
            Ok(())
        })
        .map_err(failed(format!(
            "route marked replies to ztunnel inside pod netns {}",
            netns.path().display()
        )))
}

/// Adds the fwmark rule unless it is already there (a re-enrollment).
fn ensure_rule(family: &str) -> std::io::Result<()> {
    let mark = format!("{UPSTREAM_MARK:#x}");
    let table = UPSTREAM_ROUTE_TABLE.to_string();
    let rules = ip(&[family, "rule", "show", "fwmark", &mark])?;
    if rules.contains(&format!("lookup {table}")) {
        return Ok(());
    }
    ip(&[
        family,
        "rule",
        "add",
        "fwmark",
        &mark,
        "lookup",
        &table,
        "priority",
        &UPSTREAM_RULE_PRIORITY.to_string(),
    ])
    .map(|_| ())
}

/// Runs `ip` in the calling thread's netns (the child inherits it) and returns its stdout.
fn ip(args: &[&str]) -> std::io::Result<String> {
    let output = Command::new("ip").args(args).output()?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
