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
        Command::Config { action: ConfigCommand::Check { file } } => {
            print!("{}", ztunnel::config::check(&file)?);
        }
    }
    Ok(())
}
