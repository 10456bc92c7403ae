//! The daemon's command line: one typed configuration, every default shown in `--help`.

use std::{path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};
use ztunnel_common::constants::DEFAULT_BPFFS_ROOT;

use crate::{
    admin::AdminArgs,
    ebpf::maps::{FailMode, KernelLogLevel},
    identity::DEFAULT_TRUST_DOMAIN,
    inpod::{capture::CaptureRequest, state::DEFAULT_RUN_DIR},
    proxy::{ProxyLimits, limits::DEFAULT_MAX_CONNECTIONS_PER_POD},
};

/// What enrolled pods' traffic does while ztunnel is not serving them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailModeArg {
    /// Refuse it: nothing leaves in plaintext.
    Closed,
    /// Let it go direct.
    Open,
}

impl From<FailModeArg> for FailMode {
    fn from(mode: FailModeArg) -> Self {
        match mode {
            FailModeArg::Closed => FailMode::Closed,
            FailModeArg::Open => FailMode::Open,
        }
    }
}

/// How enrolled pods' traffic is captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CaptureArg {
    /// eBPF hooks (cgroup connect/sockops/getsockopt/getpeername, TCX ingress); fail if they
    /// cannot be attached.
    Ebpf,
    /// iptables nat REDIRECT rules in each pod netns, as Istio's in-pod redirection does.
    Iptables,
    /// eBPF, falling back to iptables (with a warning) when the hooks cannot be attached.
    Auto,
}

impl From<CaptureArg> for CaptureRequest {
    fn from(capture: CaptureArg) -> Self {
        match capture {
            CaptureArg::Ebpf => CaptureRequest::Ebpf,
            CaptureArg::Iptables => CaptureRequest::Iptables,
            CaptureArg::Auto => CaptureRequest::Auto,
        }
    }
}

/// The most verbose record the kernel programs emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KernelLogLevelArg {
    /// Nothing.
    Off,
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Informational records too.
    Info,
    /// Every redirected or refused connection.
    Debug,
}

impl From<KernelLogLevelArg> for KernelLogLevel {
    fn from(level: KernelLogLevelArg) -> Self {
        match level {
            KernelLogLevelArg::Off => KernelLogLevel::Off,
            KernelLogLevelArg::Error => KernelLogLevel::Error,
            KernelLogLevelArg::Warn => KernelLogLevel::Warn,
            KernelLogLevelArg::Info => KernelLogLevel::Info,
            KernelLogLevelArg::Debug => KernelLogLevel::Debug,
        }
    }
}

/// `ztunnel daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// bpffs directory where maps and links are pinned.
    #[arg(long, default_value = DEFAULT_BPFFS_ROOT)]
    pub bpffs_root: PathBuf,
    /// Directory holding the durable enrolled set and the enrollment socket.
    #[arg(long, default_value = DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    /// cgroup-v2 directory to attach the connect/sockops/getsockopt programs to.
    #[arg(long, default_value = "/sys/fs/cgroup")]
    pub cgroup: PathBuf,
    /// What enrolled pods' traffic does while ztunnel is not serving them (iptables capture is
    /// always closed).
    #[arg(long, value_enum, default_value = "closed")]
    pub fail_mode: FailModeArg,
    /// How enrolled pods' traffic is captured; `auto` allows the iptables fallback.
    #[arg(long, value_enum, default_value = "ebpf")]
    pub capture: CaptureArg,
    /// Most verbose record the kernel programs emit (tracing target `ztunnel::ebpf`; debug logs
    /// every redirected or refused connection).
    #[arg(long, value_enum, default_value = "warn")]
    pub kernel_log_level: KernelLogLevelArg,
    /// The workloads/services/policies file (Istio ztunnel local-config shape), reloaded on
    /// change. Without it the mesh is empty: every destination is passed through.
    #[arg(long = "config", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// How often the config file is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub config_poll_ms: u64,
    #[command(flatten)]
    pub identity: IdentityArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    /// How many pods this node can enroll: the size of the `pods` and `stats` maps when they are
    /// created (maps already pinned keep their size until they are removed).
    #[arg(long, default_value_t = ztunnel_common::maps::MAX_PODS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pods: u32,
    /// How long open connections may take to finish after SIGTERM, in seconds.
    #[arg(long, default_value_t = 25)]
    pub drain_seconds: u64,
    /// If another daemon holds the run dir (an upgrade's old pod), serve every enrolled pod
    /// beside it (SO_REUSEPORT listeners) and take over capture and the enrollment socket when
    /// it exits, instead of failing.
    #[arg(long)]
    pub takeover: bool,
    /// How long an outgoing HBONE connection that carries no tunnel is kept for reuse before
    /// it is closed, in seconds.
    #[arg(long, default_value_t = crate::hbone::DEFAULT_POOL_IDLE_TIMEOUT.as_secs())]
    pub hbone_idle_seconds: u64,
    /// How often freed heap memory is returned to the kernel (glibc `malloc_trim`), in seconds.
    #[arg(long, default_value_t = 30)]
    pub memory_release_seconds: u64,
    #[command(flatten)]
    pub runtime: super::runtime::RuntimeArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Resource limits of the proxy.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// How long an inbound HBONE client may take to finish its TLS handshake, and then its
    /// HTTP/2 preface, in milliseconds; a client that stalls is disconnected.
    #[arg(long, default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
    /// A proxied connection that moves no byte in either direction for this many seconds is
    /// closed on both sides.
    #[arg(long, default_value_t = 3600)]
    pub idle_timeout_seconds: u64,
    /// Outbound connections (HBONE tunnels and passthrough) one pod may have open at once;
    /// past it, new connections are reset and counted in
    /// `ztunnel_tunnels_refused_total{reason="per_pod_limit"}`.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS_PER_POD)]
    pub max_connections_per_pod: usize,
}

impl From<&LimitArgs> for ProxyLimits {
    fn from(args: &LimitArgs) -> Self {
        Self {
            handshake_timeout: Duration::from_millis(args.handshake_timeout_ms.max(1)),
            idle_timeout: Duration::from_secs(args.idle_timeout_seconds.max(1)),
            max_connections_per_pod: args.max_connections_per_pod,
        }
    }
}

impl DaemonArgs {
    /// The config poll interval.
    pub fn config_poll_interval(&self) -> Duration {
        Duration::from_millis(self.config_poll_ms.max(1))
    }
}

/// Where workload certificates come from.
#[derive(Debug, Clone, Args)]
pub struct IdentityArgs {
    /// The mesh's trust domain.
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// A CA directory: root-cert.pem and root-key.pem (from `ztunnel ca init`), or Istio's
    /// plug-in `cacerts` (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem; issued chains
    /// then carry the intermediates): ztunnel issues and rotates workload certificates itself.
    #[arg(long, conflicts_with = "cert_dir")]
    pub ca_dir: Option<PathBuf>,
    /// A directory of workload certificates written by another issuer (root-cert.pem and
    /// <namespace>/<service-account>/{cert-chain.pem,key.pem}), re-read when they change.
    #[arg(long)]
    pub cert_dir: Option<PathBuf>,
    /// Lifetime of certificates the built-in CA issues, in hours; they are renewed at half-life.
    #[arg(long, default_value_t = 24)]
    pub cert_lifetime_hours: u64,
    /// How often certificates are checked for rotation or changes on disk, in seconds.
    #[arg(long, default_value_t = 30)]
    pub cert_refresh_seconds: u64,
    #[command(flatten)]
    pub istio_ca: IstioCaArgs,
}

/// Istio's CA (in a cluster): workload certificates signed by istiod from a CSR per service
/// account, renewed at half-life. Each flag also reads the environment variable Istio's ztunnel
/// reads for it.
#[derive(Debug, Clone, Args)]
pub struct IstioCaArgs {
    /// Istio's CA (`[https://]host:port`, e.g. istiod.istio-system.svc:15012). With it,
    /// workload certificates come from Istio's CA instead of --ca-dir or --cert-dir.
    #[arg(long, env = "CA_ADDRESS", value_name = "ADDRESS", conflicts_with_all = ["ca_dir", "cert_dir"])]
    pub ca_address: Option<String>,
    /// The mesh root (PEM): the CA's serving certificate and peers' chains must lead to it.
    #[arg(
        long,
        env = "CA_ROOT_CA",
        value_name = "FILE",
        default_value = "/var/run/secrets/istio/root-cert.pem"
    )]
    pub ca_root_cert: PathBuf,
}
