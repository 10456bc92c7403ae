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
    /// The built-in certificate authority (single-machine meshes).
    Ca {
        #[command(subcommand)]
        action: CaCommand,
    },
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
        Command::Ca { action: CaCommand::Init { dir, trust_domain } } => {
            let authority = ztunnel::identity::CertificateAuthority::generate(&trust_domain)?;
            let (cert, key) = authority.write(&dir)?;
            println!("wrote {} and {}", cert.display(), key.display());
        }
        Command::Ca { action: CaCommand::Issue { root_dir, identity, out_dir, hours } } => {
            use ztunnel::identity::ca;
            let authority = ca::CertificateAuthority::load(
                &root_dir.join(ca::ROOT_CERT_FILE),
                &root_dir.join(ca::ROOT_KEY_FILE),
            )?;
            let identity = identity.parse()?;
            let lifetime = std::time::Duration::from_secs(hours * 3600);
            let chain = ca::issue_to_directory(&authority, &identity, &out_dir, lifetime)?;
            println!("wrote {} for {identity}", chain.display());
        }
    }
    Ok(())
}
