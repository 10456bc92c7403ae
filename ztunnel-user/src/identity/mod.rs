//! Workload identity: SPIFFE ids, certificates, the built-in CA and the TLS verifiers.

pub mod spiffe;

pub use spiffe::{SpiffeId, SpiffeIdError};
