//! How enrolled pods' traffic reaches the in-pod listeners: eBPF hooks (the design) or, as a
//! fallback for kernels without them and as the benchmark baseline, iptables rules in each pod
//! netns ([`super::iptables`]).
//!
//! The daemon decides the mode once at start ([`decide`]) and records it in the enrolled set,
//! so that `ztunnel enroll` and the CNI plugin, which enroll pods without the daemon, install
//! the same kind of capture.

use serde::{Deserialize, Serialize};

/// The capture in force on a node (and on each enrolled pod).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// cgroup connect/sockops/getsockopt/getpeername programs on the node cgroup and a TCX
    /// ingress program per pod. Minimum kernel 6.6.
    #[default]
    Ebpf,
    /// nat `OUTPUT`/`PREROUTING` `REDIRECT` rules in each pod netns, the original destination
    /// from conntrack (`SO_ORIGINAL_DST`). Needs the `iptables` command (nft or legacy backend).
    Iptables,
}

/// What the operator asked for (`--capture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureRequest {
    /// eBPF only; the daemon fails when the hooks cannot be attached.
    Ebpf,
    /// iptables only.
    Iptables,
    /// eBPF, falling back to iptables when the hooks cannot be attached.
    Auto,
}

/// The mode to run in, given the request and the outcome of attaching the eBPF hooks (`None`
/// when the request did not need them). `Err` carries the attach error when it is fatal.
pub fn decide<E: std::fmt::Display>(
    request: CaptureRequest,
    hooks: Option<Result<(), E>>,
) -> Result<CaptureMode, E> {
    match (request, hooks) {
        (CaptureRequest::Iptables, _) => Ok(CaptureMode::Iptables),
        (_, None | Some(Ok(()))) => Ok(CaptureMode::Ebpf),
        (CaptureRequest::Ebpf, Some(Err(error))) => Err(error),
        (CaptureRequest::Auto, Some(Err(error))) => {
            tracing::warn!(%error, "eBPF capture hooks cannot be attached; falling back to iptables capture (--capture auto)");
            Ok(CaptureMode::Iptables)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_falls_back_only_when_the_hooks_fail() {
        let failed = || Some(Err::<(), _>("no TCX"));
        assert_eq!(
            decide(CaptureRequest::Auto, Some(Ok::<(), &str>(()))),
            Ok(CaptureMode::Ebpf)
        );
        assert_eq!(
            decide(CaptureRequest::Auto, failed()),
            Ok(CaptureMode::Iptables)
        );
        assert_eq!(decide(CaptureRequest::Ebpf, failed()), Err("no TCX"));
        assert_eq!(
            decide(CaptureRequest::Iptables, None::<Result<(), &str>>),
            Ok(CaptureMode::Iptables)
        );
    }

    #[test]
    fn mode_is_recorded_in_lowercase_and_defaults_to_ebpf() {
        assert_eq!(
            serde_json::to_string(&CaptureMode::Iptables).unwrap(),
            "\"iptables\""
        );
        assert_eq!(CaptureMode::default(), CaptureMode::Ebpf);
    }
}
