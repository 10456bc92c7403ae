//! The `ztunnel` command: parses the command line and dispatches.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    /// Install or remove the CNI plugin on this node (run by the DaemonSet's install-cni step).
    Cni {
        #[command(subcommand)]
        action: CniCommand,
    },
    /// Work with the workloads/services/policies file.
    Config {
        #[command(subcommand)]
        action: ConfigCommand,
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

#[derive(Debug, Subcommand)]
enum CniCommand {
    /// Copy this binary to the CNI bin dir as ztunnel-cni and chain it last in the primary
    /// network configuration (idempotent).
    Install {
        /// Where the runtime looks for plugin binaries.
        #[arg(long, default_value = "/host/opt/cni/bin")]
        cni_bin_dir: PathBuf,
        /// Where the runtime reads network configurations.
        #[arg(long, default_value = "/host/etc/cni/net.d")]
        cni_conf_dir: PathBuf,
        /// The node ztunnel's enrollment socket, as the plugin (on the host) sees it.
        #[arg(long, default_value = "/var/run/ztunnel/enroll.sock")]
        enrollment_socket: PathBuf,
        /// Namespaces whose pods are never enrolled (repeatable).
        #[arg(long = "exclude-namespace", default_value = "kube-system")]
        exclude_namespaces: Vec<String>,
        /// Only pods listed in this workload configuration are enrolled.
        #[arg(long)]
        workload_config: Option<PathBuf>,
    },
    /// Remove ztunnel-cni from the primary network configuration and the bin dir.
    Uninstall {
        /// Where the runtime looks for plugin binaries.
        #[arg(long, default_value = "/host/opt/cni/bin")]
        cni_bin_dir: PathBuf,
        /// Where the runtime reads network configurations.
        #[arg(long, default_value = "/host/etc/cni/net.d")]
        cni_conf_dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!(
                "ztunnel {} ({} bytes of kernel programs embedded)",
                env!("CARGO_PKG_VERSION"),
                ztunnel::ebpf::EBPF_OBJECT.len()
            );
        }
        Command::Cni { action } => cni(action)?,
        Command::Config {
            action: ConfigCommand::Check { file },
        } => {
            print!("{}", ztunnel::config::check(&file)?);
        }
    }
    Ok(())
}

fn cni(action: CniCommand) -> anyhow::Result<()> {
    use ztunnel::cni::{PluginSettings, install};
    match action {
        CniCommand::Install {
            cni_bin_dir,
            cni_conf_dir,
            enrollment_socket,
            exclude_namespaces,
            workload_config,
        } => {
            let binary = install::install_binary(&std::env::current_exe()?, &cni_bin_dir)?;
            let settings = PluginSettings {
                enrollment_socket: Some(enrollment_socket),
                exclude_namespaces,
                workload_config,
            };
            let installed = install::install(&cni_conf_dir, &install::plugin_entry(&settings))?;
            println!(
                "{} {}; plugin binary at {}",
                if installed.changed {
                    "chained ztunnel-cni into"
                } else {
                    "already chained in"
                },
                installed.path.display(),
                binary.display()
            );
        }
        CniCommand::Uninstall {
            cni_bin_dir,
            cni_conf_dir,
        } => {
            match install::uninstall(&cni_conf_dir)? {
                Some(path) => println!("removed ztunnel-cni from {}", path.display()),
                None => println!("ztunnel-cni was not chained in {}", cni_conf_dir.display()),
            }
            install::remove_binary(&cni_bin_dir)?;
        }
    }
    Ok(())
}
