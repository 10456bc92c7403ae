//! Asking the kernel what is attached where (to prove "exactly one copy on each hook").

use std::{fs::File, os::fd::AsRawFd, path::Path, process::Command};

use anyhow::Context;

use crate::env::checked;

/// (attach type, program name) of every program attached to `cgroup`, per bpftool.
pub fn cgroup_programs(cgroup: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = checked(
        Command::new("bpftool")
            .args(["cgroup", "show"])
            .arg(cgroup)
            .arg("--json"),
    )?;
    let list: serde_json::Value =
        serde_json::from_str(text.trim()).with_context(|| format!("bpftool output: {text}"))?;
    Ok(list
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| {
            (
                entry["attach_type"].as_str().unwrap_or("?").to_owned(),
                entry["name"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect())
}

/// Names of the programs attached to `interface` TCX ingress inside the netns `netns`.
/// (bpftool 7.1 cannot list TCX, so this asks with `BPF_PROG_QUERY`.)
pub fn tcx_ingress_programs(netns: &str, interface: &str) -> anyhow::Result<Vec<String>> {
    let netns_file = File::open(format!("/var/run/netns/{netns}"))?;
    let interface = std::ffi::CString::new(interface)?;
    let ids = std::thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<Vec<u32>> {
                // SAFETY: setns on this short-lived thread only.
                anyhow::ensure!(
                    unsafe { libc::setns(netns_file.as_raw_fd(), libc::CLONE_NEWNET) } == 0,
                    "setns failed"
                );
                // SAFETY: NUL-terminated name.
                let ifindex = unsafe { libc::if_nametoindex(interface.as_ptr()) };
                anyhow::ensure!(ifindex != 0, "no interface {interface:?} in {netns}");
                let mut ids = [0u32; 64];
                let mut attr = [0u64; 16];
                const BPF_PROG_QUERY: libc::c_long = 16;
                const BPF_TCX_INGRESS: u64 = 46;
                attr[0] = u64::from(ifindex) | (BPF_TCX_INGRESS << 32);
                attr[2] = ids.as_mut_ptr() as u64;
                attr[3] = ids.len() as u64;
                // SAFETY: attr is a 128-byte zeroed bpf_attr; ids outlives the call.
                let rc = unsafe {
                    libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, attr.as_mut_ptr(), 128u32)
                };
                anyhow::ensure!(
                    rc == 0,
                    "BPF_PROG_QUERY failed: {}",
                    std::io::Error::last_os_error()
                );
                let count = (attr[3] & 0xffff_ffff) as usize;
                Ok(ids[..count.min(ids.len())].to_vec())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("query thread panicked"))?
    })?;
    ids.iter()
        .map(|id| {
            let text = checked(Command::new("bpftool").args([
                "prog",
                "show",
                "id",
                &id.to_string(),
                "--json",
            ]))?;
            let info: serde_json::Value = serde_json::from_str(text.trim())?;
            Ok(info["name"].as_str().unwrap_or("?").to_owned())
        })
        .collect()
}
