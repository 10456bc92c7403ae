//! ztunnel: a per-node ambient-mesh dataplane whose capture is eBPF.
//!
//! One module per concern; `main.rs` only parses the command line and dispatches.

pub mod admin;
pub mod app;
pub mod authz;
pub mod cni;
pub mod config;
pub mod ebpf;
pub mod enrollment;
pub mod hbone;
pub mod identity;
pub mod inpod;
pub mod inspect;
pub mod proto;
pub mod proxy;
pub mod socket;
pub mod state;
pub mod waypoint;
