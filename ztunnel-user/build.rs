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
use std::path::Path;

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
    if let Some(object) = std::env::var_os("ZTUNNEL_EBPF_OBJECT") {
        let object = Path::new(&object);
        println!("cargo:rerun-if-changed={}", object.display());
        let out_dir = std::env::var("OUT_DIR")?;
        std::fs::copy(object, Path::new(&out_dir).join("ztunnel")).with_context(|| {
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
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "ztunnel-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
