//! ztunnel: a per-node ambient-mesh dataplane whose capture is eBPF.
//!
//! One module per concern; `main.rs` only parses the command line and dispatches.

pub mod ebpf;
pub mod identity;
pub mod inpod;
pub mod inspect;
pub mod socket;
