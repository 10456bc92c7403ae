//! iptables capture in a pod netns, the way Istio's in-pod redirection does it (the fallback
//! when the eBPF hooks are unavailable, and the benchmark's baseline):
//!
//! ```text
//! *nat
//! -A OUTPUT     -p tcp -j ZTUNNEL_OUTPUT
//! -A PREROUTING -p tcp -j ZTUNNEL_PREROUTING
//! -A ZTUNNEL_OUTPUT -m mark --mark 0x539 -j RETURN      ztunnel's own sockets (HBONE out)
//! -A ZTUNNEL_OUTPUT -m mark --mark 0x111 -j RETURN      ztunnel's connections to the app
//! -A ZTUNNEL_OUTPUT -o lo -j RETURN                     traffic inside the pod
//! -A ZTUNNEL_OUTPUT -p tcp -j REDIRECT --to-ports 15001
//! -A ZTUNNEL_PREROUTING -i lo -j RETURN
//! -A ZTUNNEL_PREROUTING -p tcp --dport 15008 -j RETURN  HBONE, served by its own listener
//! -A ZTUNNEL_PREROUTING -p tcp -j REDIRECT --to-ports 15006
//! ```
//!
//! The original destination comes from conntrack (`SO_ORIGINAL_DST`). The application's
//! replies to ztunnel's transparent upstream sockets come back through the same fwmark rule as
//! in eBPF mode ([`super::routing`]). IPv4 is required; IPv6 (`ip6tables`) is best effort.
//! Rules are written with `iptables-restore --noflush`, so the chains change atomically, and
//! our chains are the only thing we touch. Minimum kernel 3.7 (nat REDIRECT for IPv6).

use std::{
    io::{self, Write},
    process::{Command, Output, Stdio},
};

use ztunnel_common::constants::{
    BYPASS_MARK, HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT, UPSTREAM_MARK,
};

use super::netns::Netns;

/// Our chain in the nat table's `OUTPUT` (the pod's outbound connections).
pub const OUTPUT_CHAIN: &str = "ZTUNNEL_OUTPUT";
/// Our chain in the nat table's `PREROUTING` (connections to the pod).
pub const PREROUTING_CHAIN: &str = "ZTUNNEL_PREROUTING";

/// The two iptables front-ends: IPv4 is required, IPv6 is optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn command(self) -> &'static str {
        match self {
            Self::V4 => "iptables",
            Self::V6 => "ip6tables",
        }
    }

    fn restore_command(self) -> &'static str {
        match self {
            Self::V4 => "iptables-restore",
            Self::V6 => "ip6tables-restore",
        }
    }
}

/// The `iptables-restore --noflush` input: declaring a chain (re)creates it empty.
fn ruleset() -> String {
    format!(
        "*nat\n\
         :{OUTPUT_CHAIN} - [0:0]\n\
         :{PREROUTING_CHAIN} - [0:0]\n\
         -A {OUTPUT_CHAIN} -m mark --mark {BYPASS_MARK:#x} -j RETURN\n\
         -A {OUTPUT_CHAIN} -m mark --mark {UPSTREAM_MARK:#x} -j RETURN\n\
         -A {OUTPUT_CHAIN} -o lo -j RETURN\n\
         -A {OUTPUT_CHAIN} -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}\n\
         -A {PREROUTING_CHAIN} -i lo -j RETURN\n\
         -A {PREROUTING_CHAIN} -p tcp --dport {HBONE_PORT} -j RETURN\n\
         -A {PREROUTING_CHAIN} -p tcp -j REDIRECT --to-ports {INBOUND_PLAINTEXT_PORT}\n\
         COMMIT\n"
    )
}

/// The jumps from the built-in chains into ours: (built-in chain, our chain).
const JUMPS: [(&str, &str); 2] = [("OUTPUT", OUTPUT_CHAIN), ("PREROUTING", PREROUTING_CHAIN)];

/// Installs (or refreshes, idempotently) the capture rules in `netns`.
pub fn install_iptables_capture(netns: &Netns) -> io::Result<()> {
    netns.run(|| {
        for family in [Family::V4, Family::V6] {
            match install_family(family) {
                Ok(()) => {}
                Err(error) if family == Family::V6 => {
                    tracing::warn!(%error, "IPv6 iptables capture unavailable in pod (IPv6 off or ip6tables missing)");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    })
}

/// Removes our jumps and chains from `netns`; absent ones are fine.
pub fn remove_iptables_capture(netns: &Netns) -> io::Result<()> {
    netns.run(|| {
        for family in [Family::V4, Family::V6] {
            if let Err(error) = remove_family(family)
                && family == Family::V4
            {
                return Err(error);
            }
        }
        Ok(())
    })
}

fn install_family(family: Family) -> io::Result<()> {
    let mut child = Command::new(family.restore_command())
        .args(["--noflush", "--wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| spawn_error(family.restore_command(), error))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(ruleset().as_bytes())?;
    }
    let output = child.wait_with_output()?;
    checked(family, &["<restore>"], &output)?;
    for (builtin, ours) in JUMPS {
        let rule = ["-t", "nat", "-C", builtin, "-p", "tcp", "-j", ours];
        if iptables(family, &rule)?.status.success() {
            continue;
        }
        let insert = ["-t", "nat", "-I", builtin, "1", "-p", "tcp", "-j", ours];
        checked(family, &insert, &iptables(family, &insert)?)?;
    }
    Ok(())
}

fn remove_family(family: Family) -> io::Result<()> {
    for (builtin, ours) in JUMPS {
        let rule = ["-t", "nat", "-C", builtin, "-p", "tcp", "-j", ours];
        while iptables(family, &rule)?.status.success() {
            let delete = ["-t", "nat", "-D", builtin, "-p", "tcp", "-j", ours];
            checked(family, &delete, &iptables(family, &delete)?)?;
        }
        if iptables(family, &["-t", "nat", "-S", ours])?
            .status
            .success()
        {
            for action in ["-F", "-X"] {
                let args = ["-t", "nat", action, ours];
                checked(family, &args, &iptables(family, &args)?)?;
            }
        }
    }
    Ok(())
}

fn iptables(family: Family, args: &[&str]) -> io::Result<Output> {
    Command::new(family.command())
        .arg("--wait")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| spawn_error(family.command(), error))
}

fn spawn_error(command: &str, error: io::Error) -> io::Error {
    io::Error::new(
        error.kind(),
        format!("cannot run {command}: {error} (install the iptables package)"),
    )
}

fn checked(family: Family, args: &[&str], output: &Output) -> io::Result<()> {
    if output.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{} {} failed ({}): {}",
        family.command(),
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_exempts_our_marks_loopback_and_hbone() {
        let rules = ruleset();
        let lines: Vec<&str> = rules.lines().collect();
        let redirect_out = lines
            .iter()
            .position(|line| line.contains("REDIRECT --to-ports 15001"))
            .unwrap();
        for exemption in ["--mark 0x539", "--mark 0x111", "-o lo"] {
            let position = lines
                .iter()
                .position(|line| line.contains(exemption))
                .unwrap();
            assert!(position < redirect_out, "{exemption} after the redirect");
        }
        let redirect_in = lines
            .iter()
            .position(|line| line.contains("REDIRECT --to-ports 15006"))
            .unwrap();
        let hbone = lines
            .iter()
            .position(|line| line.contains("--dport 15008 -j RETURN"))
            .unwrap();
        assert!(hbone < redirect_in);
        assert_eq!(lines.last(), Some(&"COMMIT"));
    }
}
