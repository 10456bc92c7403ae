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
    /// Install the CNI plugin on this node (binary + chained conflist entry), or remove it.
    InstallCni(ztunnel::cni::install::InstallArgs),
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

fn main() -> anyhow::Result<()> {
    if invoked_as_cni_plugin() {
        std::process::exit(i32::from(ztunnel::cni::main()));
    }
    let cli = Cli::parse();
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
        Command::Config { action: ConfigCommand::Check { file } } => {
            print!("{}", ztunnel::config::check(&file)?);
        }
    }
    Ok(())
}
