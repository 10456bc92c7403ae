//! `xds-control-plane --listen <ip:port> --ca-dir <mesh root> --fixture <yaml> [--token <t>]`:
//! the test stand-in for istiod (see `ztunnel_e2e::control_plane`). Logs to stdout.

use std::path::PathBuf;

use anyhow::Context;
use ztunnel_e2e::control_plane::serve::{ServeArgs, serve};

fn main() -> anyhow::Result<()> {
    let mut arguments = std::env::args().skip(1);
    let (mut listen, mut ca_dir, mut fixture, mut token) = (None, None, None, None);
    while let Some(flag) = arguments.next() {
        let value = arguments
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse()?),
            "--ca-dir" => ca_dir = Some(PathBuf::from(value)),
            "--fixture" => fixture = Some(PathBuf::from(value)),
            "--token" => token = Some(value),
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let args = ServeArgs {
        listen: listen.context("--listen is required")?,
        ca_dir: ca_dir.context("--ca-dir is required")?,
        fixture: fixture.context("--fixture is required")?,
        token,
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(args))
}
