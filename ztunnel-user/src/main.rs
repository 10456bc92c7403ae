//! The `ztunnel` command: parses the command line and dispatches.

use std::{io::IsTerminal, net::IpAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use ztunnel::{
    app::FailModeArg,
    ebpf::{LoadedPrograms, PinLayout, PinnedMaps, maps::FailMode},
    inpod::{
        enroll::{self, PodSelector, PodSpec},
        state::DEFAULT_RUN_DIR,
    },
    inspect,
};
use ztunnel_common::constants::DEFAULT_BPFFS_ROOT;

/// A per-node ambient-mesh dataplane whose traffic capture is eBPF.
#[derive(Debug, Parser)]
#[command(name = "ztunnel", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the size of the embedded kernel programs.
    Version,
    /// Install the CNI plugin on this node (binary + chained conflist entry), or remove it.
    InstallCni(ztunnel::cni::install::InstallArgs),
    /// Work with the workloads/services/policies file.
    Config {
        #[command(subcommand)]
        action: ConfigCommand,
    },
    /// The capture agent and the proxy in one process: load or adopt the kernel programs and
    /// serve every enrolled pod until SIGTERM.
    Daemon(Box<ztunnel::app::DaemonArgs>),
    /// The capture agent alone: load or adopt the kernel programs, take enrollments, and hand
    /// every enrolled pod to the proxies that connect over ZDS (ours or Istio's ztunnel).
    Agent(ztunnel::app::AgentArgs),
    /// The proxy alone: serve the pods a capture agent hands over on its ZDS socket.
    Proxy(Box<ztunnel::app::ProxyCommandArgs>),
    /// Run an L4 waypoint: HBONE in, the destination's policy, HBONE out with its own identity.
    Waypoint(Box<ztunnel::waypoint::WaypointArgs>),
    /// Enroll a pod: capture its TCP (maps, TC link in its netns, durable record).
    Enroll(EnrollArgs),
    /// Unenroll a pod by netns path or by namespace and name.
    Unenroll(UnenrollArgs),
    /// Show the pinned maps (works with the daemon stopped).
    Inspect(InspectArgs),
    /// Set the node's fail mode in the pinned config map (takes effect at once).
    SetFailMode {
        /// closed: refuse captured traffic while ztunnel is not serving; open: let it go direct.
        #[arg(value_enum)]
        mode: FailModeArg,
        #[command(flatten)]
        paths: Paths,
    },
    /// The built-in certificate authority (single-machine meshes).
    Ca {
        #[command(subcommand)]
        action: CaCommand,
    },
}

#[derive(Debug, Clone, Args)]
struct Paths {
    /// bpffs directory where maps and links are pinned.
    #[arg(long, default_value = DEFAULT_BPFFS_ROOT)]
    bpffs_root: PathBuf,
    /// Directory holding the durable enrolled set.
    #[arg(long, default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
}

#[derive(Debug, Args)]
struct EnrollArgs {
    #[command(flatten)]
    paths: Paths,
    /// The pod's netns file, e.g. /var/run/netns/<name> or /proc/<pid>/ns/net.
    #[arg(long)]
    netns: PathBuf,
    /// A pod IP (repeat for several).
    #[arg(long = "ip", required = true)]
    ips: Vec<IpAddr>,
    /// Pod name.
    #[arg(long)]
    name: String,
    /// Kubernetes namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The pod's interface inside its netns.
    #[arg(long, default_value = "eth0")]
    interface: String,
}

#[derive(Debug, Args)]
struct UnenrollArgs {
    #[command(flatten)]
    paths: Paths,
    /// The pod's netns file.
    #[arg(long, conflicts_with = "name")]
    netns: Option<PathBuf>,
    /// Pod name (with --namespace).
    #[arg(long, required_unless_present = "netns")]
    name: Option<String>,
    /// Kubernetes namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// Which map to show.
    #[arg(value_enum)]
    view: ViewArg,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    paths: Paths,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ViewArg {
    Pods,
    Workloads,
    Stats,
    Config,
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Write a new root (root-cert.pem, root-key.pem) into DIR; never overwrites.
    Init {
        /// Where to write the root.
        dir: PathBuf,
        /// The mesh's trust domain.
        #[arg(long, default_value = ztunnel::identity::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
    },
    /// Issue a workload certificate from the root in ROOT_DIR into OUT_DIR/<ns>/<sa>/.
    Issue {
        /// Directory holding root-cert.pem and root-key.pem.
        root_dir: PathBuf,
        /// The SPIFFE id, e.g. spiffe://cluster.local/ns/default/sa/sleep.
        identity: String,
        /// Certificate directory (the layout a file-backed certificate store reads).
        out_dir: PathBuf,
        /// Lifetime in hours.
        #[arg(long, default_value_t = 24)]
        hours: u64,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Load FILE as the daemon would and print what it holds, or why it is refused.
    Check {
        /// The configuration file (Istio ztunnel local-config shape).
        file: PathBuf,
    },
}

/// Whether this process was started under the CNI plugin's name.
fn invoked_as_cni_plugin() -> bool {
    std::env::args_os()
        .next()
        .and_then(|argv0| {
            std::path::Path::new(&argv0)
                .file_name()
                .map(|name| name == ztunnel::cni::PLUGIN_NAME)
        })
        .unwrap_or(false)
}

fn main() -> std::process::ExitCode {
    if invoked_as_cni_plugin() {
        std::process::exit(i32::from(ztunnel::cni::main()));
    }
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error_report(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and each of its causes that says something new. Most of our errors already name
/// their cause in their own message (`...: {source}`) and also hand it out as `source()`, so
/// anyhow's own report would print the same text again under "Caused by:".
fn error_report(error: &anyhow::Error) -> String {
    let mut report = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !report.contains(&text) {
            report.push_str("\n  caused by: ");
            report.push_str(&text);
        }
    }
    report
}

fn run(cli: Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        Command::InstallCni(args) => {
            for line in ztunnel::cni::install::run(&args)? {
                println!("{line}");
            }
        }
        Command::Version => {
            println!(
                "ztunnel {} ({} bytes of kernel programs embedded)",
                env!("CARGO_PKG_VERSION"),
                ztunnel::ebpf::EBPF_OBJECT.len()
            );
        }
        Command::Daemon(args) => {
            ztunnel::app::memory::keep_freed_memory_for_reuse();
            ztunnel::app::run(*args)?
        }
        Command::Agent(args) => ztunnel::app::agent::run(args)?,
        Command::Proxy(args) => {
            ztunnel::app::memory::keep_freed_memory_for_reuse();
            ztunnel::app::proxy::run(*args)?
        }
        Command::Waypoint(args) => ztunnel::waypoint::run(*args)?,
        Command::Enroll(args) => {
            let layout = PinLayout::new(args.paths.bpffs_root);
            let mut programs = LoadedPrograms::load(&layout)?;
            let spec = PodSpec {
                name: args.name,
                namespace: args.namespace,
                netns: args.netns,
                ips: args.ips,
                interface: args.interface,
            };
            let pod = enroll::enroll(&mut programs, &args.paths.run_dir, &spec)?;
            println!(
                "enrolled {}/{} (netns cookie {}, index {})",
                pod.namespace, pod.name, pod.netns_cookie, pod.index
            );
        }
        Command::Unenroll(args) => {
            let layout = PinLayout::new(args.paths.bpffs_root);
            let selector = match (args.netns, args.name) {
                (Some(netns), _) => PodSelector::Netns(netns),
                (None, Some(name)) => PodSelector::Name {
                    namespace: args.namespace,
                    name,
                },
                (None, None) => anyhow::bail!("pass --netns or --name"),
            };
            match enroll::unenroll(&layout, &args.paths.run_dir, &selector)? {
                Some(pod) => println!("unenrolled {}/{}", pod.namespace, pod.name),
                None => anyhow::bail!(
                    "no enrolled pod matches {selector:?} (see `ztunnel inspect pods`)"
                ),
            }
        }
        Command::Inspect(args) => {
            let view = match args.view {
                ViewArg::Pods => inspect::View::Pods,
                ViewArg::Workloads => inspect::View::Workloads,
                ViewArg::Stats => inspect::View::Stats,
                ViewArg::Config => inspect::View::Config,
            };
            let layout = PinLayout::new(args.paths.bpffs_root);
            print!(
                "{}",
                inspect::render(&layout, &args.paths.run_dir, view, args.json)?
            );
            if args.json {
                println!();
            }
        }
        Command::SetFailMode { mode, paths } => {
            let mut maps = PinnedMaps::open(&PinLayout::new(paths.bpffs_root))?;
            let mode = FailMode::from(mode);
            let log_level = maps.config()?.log_level;
            maps.write_config(mode.record_value(), log_level)?;
            println!("fail mode set to {mode}");
        }
        Command::Config {
            action: ConfigCommand::Check { file },
        } => {
            print!("{}", ztunnel::config::check(&file)?);
        }
        Command::Ca {
            action: CaCommand::Init { dir, trust_domain },
        } => {
            let authority = ztunnel::identity::CertificateAuthority::generate(&trust_domain)?;
            let (cert, key) = authority.write(&dir)?;
            println!("wrote {} and {}", cert.display(), key.display());
        }
        Command::Ca {
            action:
                CaCommand::Issue {
                    root_dir,
                    identity,
                    out_dir,
                    hours,
                },
        } => {
            use ztunnel::identity::ca;
            let authority = ztunnel::identity::ca_dir::load(&root_dir)?;
            let identity = identity.parse()?;
            let lifetime = std::time::Duration::from_secs(hours * 3600);
            let chain = ca::issue_to_directory(&authority, &identity, &out_dir, lifetime)?;
            println!("wrote {} for {identity}", chain.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(arguments: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ztunnel").chain(arguments.iter().copied()))
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot read /x: {source}")]
        struct Outer {
            source: std::io::Error,
        }
        let named = anyhow::Error::new(Outer {
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        let unnamed = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::NotFound))
            .context("cannot start");
        let (named, unnamed) = (error_report(&named), error_report(&unnamed));
        println!("named cause:\n{named}\nunnamed cause:\n{unnamed}");
        assert_eq!(named, "cannot read /x: entity not found");
        assert_eq!(unnamed, "cannot start\n  caused by: entity not found");
    }

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn daemon_takes_its_state_from_xds_or_a_file_not_both() {
        let Command::Daemon(args) = parse(&[
            "daemon",
            "--xds-address",
            "https://istiod.istio-system.svc:15012",
            "--token-file",
            "/var/run/secrets/tokens/istio-token",
            "--cluster-id",
            "c1",
        ])
        .unwrap()
        .command
        else {
            panic!("not daemon")
        };
        assert_eq!(
            args.proxy.xds.xds_address.as_deref(),
            Some("https://istiod.istio-system.svc:15012")
        );
        assert_eq!(args.proxy.xds.cluster_id, "c1");
        assert!(
            parse(&[
                "daemon",
                "--config",
                "mesh.yaml",
                "--xds-address",
                "https://istiod:15012"
            ])
            .is_err()
        );
    }

    #[test]
    fn daemon_defaults() {
        let Command::Daemon(args) = parse(&["daemon"]).unwrap().command else {
            panic!("not daemon")
        };
        let args = args.capture;
        assert_eq!(args.bpffs_root, PathBuf::from(DEFAULT_BPFFS_ROOT));
        assert_eq!(args.run_dir, PathBuf::from(DEFAULT_RUN_DIR));
        assert_eq!(args.cgroup, None, "the cgroup2 mount is looked up at start");
        assert_eq!(
            args.zds_socket(),
            PathBuf::from("/run/ztunnel/ztunnel.sock"),
            "Istio's ztunnel looks at /var/run/ztunnel/ztunnel.sock (/var/run is /run)"
        );
        assert!(matches!(args.fail_mode, FailModeArg::Closed));
        assert!(matches!(
            args.kernel_log_level,
            ztunnel::app::args::KernelLogLevelArg::Warn
        ));
        assert!(parse(&["daemon", "--kernel-log-level", "loud"]).is_err());
        assert!(parse(&["daemon", "--fail-mode", "sometimes"]).is_err());
    }

    #[test]
    fn agent_and_proxy_split_the_daemons_flags() {
        let Command::Agent(agent) = parse(&[
            "agent",
            "--zds-socket",
            "/tmp/z.sock",
            "--cgroup",
            "/sys/fs/cgroup/unified",
        ])
        .unwrap()
        .command
        else {
            panic!("not agent")
        };
        assert_eq!(agent.capture.zds_socket(), PathBuf::from("/tmp/z.sock"));
        assert!(
            parse(&["agent", "--ca-dir", "/x"]).is_err(),
            "the agent took a proxy flag"
        );
        let Command::Proxy(proxy) = parse(&["proxy"]).unwrap().command else {
            panic!("not proxy")
        };
        assert_eq!(
            proxy.zds_socket,
            PathBuf::from(ztunnel::zds::DEFAULT_SOCKET)
        );
        assert!(
            parse(&["proxy", "--bpffs-root", "/x"]).is_err(),
            "the proxy took a capture flag"
        );
    }

    #[test]
    fn enroll_needs_netns_name_and_valid_ips() {
        let Command::Enroll(args) = parse(&[
            "enroll",
            "--netns",
            "/var/run/netns/a",
            "--ip",
            "198.18.0.10",
            "--ip",
            "2001:db8::10",
            "--name",
            "a",
        ])
        .unwrap()
        .command
        else {
            panic!("not enroll")
        };
        assert_eq!(args.ips.len(), 2);
        assert_eq!(args.namespace, "default");
        assert_eq!(args.interface, "eth0");
        assert!(
            parse(&["enroll", "--netns", "/x", "--name", "a"]).is_err(),
            "no --ip accepted"
        );
        assert!(
            parse(&[
                "enroll",
                "--netns",
                "/x",
                "--ip",
                "198.18.0.300",
                "--name",
                "a"
            ])
            .is_err(),
            "bad IP accepted"
        );
        assert!(
            parse(&["enroll", "--ip", "198.18.0.10", "--name", "a"]).is_err(),
            "no --netns accepted"
        );
    }

    #[test]
    fn unenroll_by_netns_or_name() {
        assert!(parse(&["unenroll", "--netns", "/x"]).is_ok());
        assert!(parse(&["unenroll", "--name", "a", "--namespace", "ns"]).is_ok());
        assert!(
            parse(&["unenroll"]).is_err(),
            "neither --netns nor --name accepted"
        );
        assert!(
            parse(&["unenroll", "--netns", "/x", "--name", "a"]).is_err(),
            "both accepted"
        );
    }

    #[test]
    fn waypoint_needs_a_config_and_defaults_to_istio_ports() {
        let Command::Waypoint(args) = parse(&[
            "waypoint",
            "--config",
            "mesh.yaml",
            "--service-account",
            "wp",
        ])
        .unwrap()
        .command
        else {
            panic!("not waypoint")
        };
        assert_eq!(args.namespace, "default");
        assert_eq!(args.service_account, "wp");
        assert_eq!(args.hbone_address.port(), 15008);
        assert!(parse(&["waypoint"]).is_err(), "no --config accepted");
        assert!(
            parse(&[
                "waypoint",
                "--config",
                "m",
                "--ca-dir",
                "a",
                "--cert-dir",
                "b"
            ])
            .is_err(),
            "both certificate sources accepted"
        );
    }

    #[test]
    fn inspect_and_fail_mode_values() {
        assert!(parse(&["inspect", "pods", "--json"]).is_ok());
        assert!(parse(&["inspect", "links"]).is_err());
        assert!(parse(&["set-fail-mode", "open"]).is_ok());
        assert!(parse(&["set-fail-mode", "ajar"]).is_err());
    }
}
