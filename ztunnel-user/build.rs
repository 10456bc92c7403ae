//! Builds the kernel programs (`ztunnel-ebpf`) with the nightly toolchain and bpf-linker, the
//! aya-template way; `src/ebpf` embeds the object with `include_bytes_aligned!`.
//!
//! Also compiles the protobuf schemas in `proto/` (xDS, Istio's workload, authorization and CA
//! APIs) into Rust with protox (a protobuf compiler in Rust: no `protoc` on the machine) and
//! tonic-prost-build; `src/proto.rs` includes the generated modules.
//!
//! With `ZTUNNEL_EBPF_OBJECT` set (by `cargo xtask bench` and `cargo xtask fuzz`), it copies that
//! already built object instead, so the kernel programs are compiled once per checkout rather
//! than once per profile.
//!
//! aya-build replays every line of the nested cargo build as a `cargo:warning=` directive, and
//! cargo replays a build script's warnings on every later build, even when nothing was rebuilt.
//! So its standard output is captured: directives go through, the nested build's lines are kept
//! in `OUT_DIR/ebpf-build.log` and printed (on standard error, which cargo shows when a build
//! script fails) only when the build fails.
use std::{
    fs::File,
    io::Write,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::Context;

/// The schemas, relative to `proto/`.
const PROTO_FILES: &[&str] = &[
    "discovery.proto",
    "workload.proto",
    "authorization.proto",
    "ca.proto",
];

fn main() -> anyhow::Result<()> {
    compile_protos()?;
    build_ebpf()
}

fn compile_protos() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTO_FILES, ["proto"])
        .context("cannot compile the protobuf schemas in ztunnel-user/proto")?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)
        .context("cannot generate Rust code from the protobuf schemas")
}

fn build_ebpf() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=ZTUNNEL_EBPF_OBJECT");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    if let Some(object) = std::env::var_os("ZTUNNEL_EBPF_OBJECT") {
        let object = Path::new(&object);
        println!("cargo:rerun-if-changed={}", object.display());
        std::fs::copy(object, out_dir.join("ztunnel")).with_context(|| {
            format!(
                "cannot copy the kernel object from ZTUNNEL_EBPF_OBJECT={}",
                object.display()
            )
        })?;
        return Ok(());
    }
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&manifest_dir).join("../ztunnel-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path to ztunnel-ebpf: {}", ebpf_dir.display()))?;
    let log_path = out_dir.join("ebpf-build.log");
    let result = with_stdout_captured(&log_path, || {
        aya_build::build_ebpf(
            [aya_build::Package {
                name: "ztunnel-ebpf",
                root_dir: ebpf_dir,
                ..Default::default()
            }],
            aya_build::Toolchain::default(),
        )
    })?;
    let captured = std::fs::read_to_string(&log_path)
        .with_context(|| format!("cannot read {}", log_path.display()))?;
    let mut nested_output = Vec::new();
    for line in captured.lines() {
        match line.strip_prefix("cargo:warning=") {
            Some(text) => nested_output.push(text),
            None => println!("{line}"),
        }
    }
    if let Err(error) = result {
        eprintln!("the eBPF build (ztunnel-ebpf, nightly, bpf-linker) failed; its output:");
        for line in nested_output {
            eprintln!("  {line}");
        }
        // Printed here rather than returned: a returned error comes with a backtrace of this
        // script when RUST_BACKTRACE is set, which says nothing about the eBPF build.
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
    Ok(())
}

/// Runs `body` with file descriptor 1 pointing at `log_path`, then puts it back.
fn with_stdout_captured<T>(log_path: &Path, body: impl FnOnce() -> T) -> anyhow::Result<T> {
    let log =
        File::create(log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    std::io::stdout().flush()?;
    // SAFETY: dup and dup2 on descriptors this process owns; `saved` is closed below, after it
    // has been copied back onto fd 1.
    let saved = unsafe { libc::dup(libc::STDOUT_FILENO) };
    anyhow::ensure!(
        saved >= 0,
        "cannot duplicate standard output: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: as above; `log` stays open until after the call.
    let redirected = unsafe { libc::dup2(log.as_raw_fd(), libc::STDOUT_FILENO) };
    anyhow::ensure!(
        redirected >= 0,
        "cannot redirect standard output: {}",
        std::io::Error::last_os_error()
    );
    let value = body();
    std::io::stdout().flush()?;
    // SAFETY: restores cargo's pipe on fd 1 and closes the duplicate, both owned here.
    let restored = unsafe {
        let restored = libc::dup2(saved, libc::STDOUT_FILENO);
        libc::close(saved);
        restored
    };
    anyhow::ensure!(
        restored >= 0,
        "cannot restore standard output: {}",
        std::io::Error::last_os_error()
    );
    Ok(value)
}
