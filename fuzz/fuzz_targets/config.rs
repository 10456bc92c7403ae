//! The workload config file: YAML text → `LocalConfig` → `State` (what a reload puts in force).
//! Any input must end in a value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ztunnel::{config, state::State};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = config::parse(text, "<fuzz>") else {
        return;
    };
    if let Ok(state) = State::from_config(parsed) {
        // Every lookup a connection makes must work on whatever was accepted.
        for workload in state.workloads() {
            for ip in &workload.workload_ips {
                let _ = state.workload_by_ip(*ip);
            }
            let _ = state.policies_for(workload).count();
        }
    }
});
