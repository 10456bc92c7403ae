//! Loading, attaching, pinning and adopting the kernel programs, and typed map access.

/// The kernel programs, built by `build.rs` from `ztunnel-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ztunnel"));
