//! Builds the kernel programs (`ztunnel-ebpf`) with the nightly toolchain and bpf-linker, the
//! aya-template way; `src/ebpf` embeds the object with `include_bytes_aligned!`.
//!
//! With `ZTUNNEL_EBPF_OBJECT` set (by `cargo xtask bench` and `cargo xtask fuzz`), it copies that
//! already built object instead, so the kernel programs are compiled once per checkout rather
//! than once per profile.
use std::path::Path;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
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
