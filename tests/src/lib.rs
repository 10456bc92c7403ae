//! End-to-end harness: simulated nodes and pods in network namespaces.

pub mod cni_runtime;
