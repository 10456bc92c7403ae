//! Library target so `ztunnel-user` can name this crate as a build-dependency (cargo then
//! rebuilds the embedded object when the kernel programs change). The programs are in `main.rs`.
#![no_std]
