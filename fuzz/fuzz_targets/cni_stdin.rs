//! The CNI plugin's stdin (network config with `prevResult`) and its `CNI_ARGS` parser: what
//! the container runtime hands us. Errors must be spec error objects, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ztunnel::cni::spec::{NetworkConfig, parse_args};

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = NetworkConfig::parse(data) {
        let _ = config.pod_ips();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_args(text);
    }
});
