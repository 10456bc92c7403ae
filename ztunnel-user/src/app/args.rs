//! The daemon's command line: one typed configuration, every default shown in `--help`.

use std::{path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};
use ztunnel_common::constants::DEFAULT_BPFFS_ROOT;

use crate::{
    admin::AdminArgs,
    ebpf::maps::{FailMode, KernelLogLevel},
    hbone::{Keepalive, keepalive},
    identity::DEFAULT_TRUST_DOMAIN,
    inpod::{capture::CaptureRequest, state::DEFAULT_RUN_DIR},
    proxy::{ProxyLimits, limits::DEFAULT_MAX_CONNECTIONS_PER_POD},
    xds::{ControlPlaneAddress, NodeIdentity, XdsConfig, XdsError, transport::tls_config},
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

/// Where the capture agent keeps its state and how it captures: the flags `ztunnel agent` and
/// `ztunnel daemon` share.
#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// bpffs directory where maps and links are pinned.
    #[arg(long, default_value = DEFAULT_BPFFS_ROOT)]
    pub bpffs_root: PathBuf,
    /// Directory holding the durable enrolled set, the CNI plugin's enrollment socket and (by
    /// default) the ZDS socket.
    #[arg(long, default_value = DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    /// cgroup-v2 directory to attach the connect/sockops/getsockopt programs to [default: the
    /// cgroup2 mount found in /proc/mounts, e.g. /sys/fs/cgroup/unified on a hybrid host]. The
    /// proxy must run in it or below it (its SO_ORIGINAL_DST lookups are answered there only).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// What enrolled pods' traffic does while no proxy serves them (iptables capture is always
    /// closed).
    #[arg(long, value_enum, default_value = "closed")]
    pub fail_mode: FailModeArg,
    /// How enrolled pods' traffic is captured; `auto` allows the iptables fallback.
    #[arg(long, value_enum, default_value = "ebpf")]
    pub capture: CaptureArg,
    /// Most verbose record the kernel programs emit (tracing target `ztunnel::ebpf`; debug logs
    /// every redirected or refused connection).
    #[arg(long, value_enum, default_value = "warn")]
    pub kernel_log_level: KernelLogLevelArg,
    /// How many pods this node can enroll: the size of the `pods` and `stats` maps when they are
    /// created (maps already pinned keep their size until they are removed).
    #[arg(long, default_value_t = ztunnel_common::maps::MAX_PODS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pods: u32,
    /// The ZDS socket proxies connect to (Istio's ztunnel: INPOD_UDS) [default:
    /// <run-dir>/ztunnel.sock, which with the default run dir is /var/run/ztunnel/ztunnel.sock,
    /// where Istio's ztunnel looks]
    #[arg(long, value_name = "PATH")]
    pub zds_socket: Option<PathBuf>,
}

impl CaptureArgs {
    /// The ZDS socket path.
    pub fn zds_socket(&self) -> PathBuf {
        self.zds_socket
            .clone()
            .unwrap_or_else(|| self.run_dir.join(crate::agent::ZDS_SOCKET_NAME))
    }
}

/// `ztunnel agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Where and how the agent captures.
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// The workloads file (Istio ztunnel local-config shape), read for each pod's service
    /// account to tell proxies; pods it does not list are announced with `default`.
    #[arg(long = "config", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// How often the config file is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub config_poll_ms: u64,
}

/// The proxy's flags, shared by `ztunnel proxy` and `ztunnel daemon`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The workloads/services/policies file (Istio ztunnel local-config shape), reloaded on
    /// change. Without it (and without --xds-address) the mesh is empty: every destination is
    /// passed through.
    #[arg(long = "config", value_name = "FILE", conflicts_with = "xds_address")]
    pub config_file: Option<PathBuf>,
    /// How often the config file is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub config_poll_ms: u64,
    /// Where workloads, services and policies come from when istiod serves them.
    #[command(flatten)]
    pub xds: XdsArgs,
    /// Where certificates come from.
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// The operations servers.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// How long open connections may take to finish after SIGTERM, in seconds.
    #[arg(long, default_value_t = 25)]
    pub drain_seconds: u64,
    /// How long an outgoing HBONE connection that carries no tunnel is kept for reuse before
    /// it is closed, in seconds.
    #[arg(long, default_value_t = crate::hbone::DEFAULT_POOL_IDLE_TIMEOUT.as_secs())]
    pub hbone_idle_seconds: u64,
    /// How often freed heap memory is returned to the kernel (glibc `malloc_trim`), in seconds.
    #[arg(long, default_value_t = 30)]
    pub memory_release_seconds: u64,
    /// The async runtime.
    #[command(flatten)]
    pub runtime: super::runtime::RuntimeArgs,
    /// Resource limits.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// `ztunnel proxy`.
#[derive(Debug, Args)]
pub struct ProxyCommandArgs {
    /// The proxy.
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// The capture agent's ZDS socket.
    #[arg(long, value_name = "PATH", default_value = crate::zds::DEFAULT_SOCKET)]
    pub zds_socket: PathBuf,
}

/// `ztunnel daemon`: the capture agent and the proxy in one process.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Where and how the agent captures.
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// The proxy.
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// If another daemon holds the run dir (an upgrade's old pod), serve every enrolled pod
    /// beside it (SO_REUSEPORT listeners, pods learnt over its ZDS socket) and take over capture
    /// and the sockets when it exits, instead of failing.
    #[arg(long)]
    pub takeover: bool,
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
    /// HBONE keep-alive PINGs and the bound on a connection without streams.
    #[command(flatten)]
    pub keepalive: KeepaliveArgs,
}

impl From<&LimitArgs> for ProxyLimits {
    fn from(args: &LimitArgs) -> Self {
        Self {
            handshake_timeout: Duration::from_millis(args.handshake_timeout_ms.max(1)),
            idle_timeout: Duration::from_secs(args.idle_timeout_seconds.max(1)),
            max_connections_per_pod: args.max_connections_per_pod,
            keepalive: (&args.keepalive).into(),
        }
    }
}

/// Keep-alive of HBONE connections (the daemon's and the waypoint's, both directions).
#[derive(Debug, Clone, Args)]
pub struct KeepaliveArgs {
    /// How often an HBONE connection's peer is sent an HTTP/2 PING, in milliseconds (Istio's
    /// ztunnel: 10 s).
    #[arg(long, default_value_t = keepalive::DEFAULT_PING_INTERVAL.as_millis() as u64)]
    pub hbone_ping_interval_ms: u64,
    /// A PING not answered within this many milliseconds closes the connection (Istio's
    /// ztunnel: 20 s); counted in `ztunnel_hbone_connections_closed_total{reason="ping_timeout"}`.
    #[arg(long, default_value_t = keepalive::DEFAULT_PING_TIMEOUT.as_millis() as u64)]
    pub hbone_ping_timeout_ms: u64,
    /// An inbound HBONE connection that carries no stream for this many milliseconds is closed
    /// with GOAWAY (longer than clients keep unused pooled connections, 5 min); counted in
    /// `ztunnel_hbone_connections_closed_total{reason="no_stream"}`.
    #[arg(long, default_value_t = keepalive::DEFAULT_UNUSED_TIMEOUT.as_millis() as u64)]
    pub hbone_unused_timeout_ms: u64,
}

impl From<&KeepaliveArgs> for Keepalive {
    fn from(args: &KeepaliveArgs) -> Self {
        Self {
            ping_interval: Duration::from_millis(args.hbone_ping_interval_ms.max(1)),
            ping_timeout: Duration::from_millis(args.hbone_ping_timeout_ms.max(1)),
            unused_timeout: Duration::from_millis(args.hbone_unused_timeout_ms.max(1)),
        }
    }
}

impl ProxyArgs {
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
    /// Istio's CA, when certificates come from it.
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

/// Where workloads, services and policies come from in a cluster: istiod over xDS. Each flag
/// also reads the environment variable Istio's ztunnel reads for it.
#[derive(Debug, Clone, Args)]
pub struct XdsArgs {
    /// istiod's xDS address, e.g. https://istiod.istio-system.svc:15012. With it, workloads,
    /// services and policies come from istiod instead of --config.
    #[arg(long, env = "XDS_ADDRESS", value_name = "URL")]
    pub xds_address: Option<String>,
    /// The mesh root certificate (PEM) istiod's serving certificate must chain to.
    #[arg(
        long,
        env = "XDS_ROOT_CA",
        value_name = "FILE",
        default_value = "/var/run/secrets/istio/root-cert.pem"
    )]
    pub xds_root_cert: PathBuf,
    /// The projected service-account token sent to istiod as a bearer token (re-read for every
    /// connection). Without it no token is sent.
    #[arg(long, env = "AUTH_TOKEN", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The cluster this node belongs to (node metadata `CLUSTER_ID`, header `clusterid`).
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,
    /// This ztunnel pod's IP, for the xDS node id (Kubernetes downward API).
    #[arg(long, env = "INSTANCE_IP", default_value = "")]
    pub instance_ip: String,
    /// This ztunnel pod's name, for the xDS node id.
    #[arg(long, env = "POD_NAME", default_value = "")]
    pub pod_name: String,
    /// This ztunnel pod's namespace, for the xDS node id.
    #[arg(long, env = "POD_NAMESPACE", default_value = "")]
    pub pod_namespace: String,
    /// The Kubernetes node this ztunnel serves (node metadata `NODE_NAME`).
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node_name: String,
}

impl XdsArgs {
    /// The client configuration, or `None` when --xds-address is not given.
    pub fn client_config(&self) -> Result<Option<XdsConfig>, XdsError> {
        let Some(address) = &self.xds_address else {
            return Ok(None);
        };
        Ok(Some(XdsConfig {
            address: ControlPlaneAddress::parse(address)?,
            tls: tls_config(&self.xds_root_cert)?,
            token_file: self.token_file.clone(),
            cluster_id: self.cluster_id.clone(),
            node: NodeIdentity {
                instance_ip: self.instance_ip.clone(),
                pod_name: self.pod_name.clone(),
                pod_namespace: self.pod_namespace.clone(),
                node_name: self.node_name.clone(),
                cluster_id: self.cluster_id.clone(),
            },
        }))
    }
}
