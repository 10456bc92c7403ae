//! Ports and socket marks, each defined once.

/// In-pod outbound listener port (127.0.0.1 / ::1 inside each enrolled pod's netns).
/// Written by: the connect hooks (rewrite target). Read by: the in-pod outbound listener.
pub const OUTBOUND_PORT: u16 = 15001;
/// In-pod inbound plaintext listener port (`IP_TRANSPARENT`, target of TC `bpf_sk_assign`).
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// HBONE (HTTP/2 CONNECT over mutual TLS) listener port on each pod IP.
pub const HBONE_PORT: u16 = 15008;
/// Admin port (localhost only, `/config_dump`).
pub const ADMIN_PORT: u16 = 15000;
/// Prometheus metrics port (`/metrics`).
pub const METRICS_PORT: u16 = 15020;
/// Readiness port (`/healthz/ready`).
pub const READINESS_PORT: u16 = 15021;

/// `SO_MARK` carried by every socket ztunnel opens; such sockets are never captured.
pub const BYPASS_MARK: u32 = 0x539;
/// `SO_MARK` of ztunnel's upstream sockets to the local application that keep the original
/// source address (`IP_TRANSPARENT`); replies with this mark are routed to the pod's local table.
pub const UPSTREAM_MARK: u32 = 0x111;

/// `optname` of `getsockopt(SOL_IP, SO_ORIGINAL_DST)` (netfilter's, answered by our hook).
pub const SO_ORIGINAL_DST: i32 = 80;
/// `optname` of `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)`.
pub const IP6T_SO_ORIGINAL_DST: i32 = 80;
/// `SOL_IP` socket option level.
pub const SOL_IP: i32 = 0;
/// `SOL_IPV6` socket option level.
pub const SOL_IPV6: i32 = 41;
/// Default bpffs directory where maps and links are pinned.
pub const DEFAULT_BPFFS_ROOT: &str = "/sys/fs/bpf/ztunnel";
