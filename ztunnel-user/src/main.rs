//! The `ztunnel` command: parses the command line and dispatches.

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
    }
    Ok(())
}
