//! The kernel/userspace contract of ztunnel: ports, marks, map names and the
//! `#[repr(C)]` keys and values of every pinned BPF map.
//!
//! Nothing here has logic. Each item says who writes it and who reads it.
#![no_std]
#![deny(missing_docs)]

pub mod constants;
pub mod maps;
pub mod types;

pub use types::*;
