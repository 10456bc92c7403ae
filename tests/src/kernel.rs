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

/// `BPF_PROG_TYPE_SCHED_CLS` (TC programs).
pub const PROG_TYPE_SCHED_CLS: u32 = 3;
/// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR` (connect, getpeername, ... hooks).
pub const PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
/// `BPF_CGROUP_INET4_CONNECT`.
pub const ATTACH_CGROUP_INET4_CONNECT: u32 = 10;

/// Loads a two-instruction program (`r0 = return_value; exit`) named `name`: what an older,
/// different build of a program looks like to the kernel (another tag, no maps). Minimum
/// kernel 4.15 (program names).
pub fn load_trivial_program(
    program_type: u32,
    expected_attach_type: u32,
    return_value: i32,
    name: &str,
) -> anyhow::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    const BPF_PROG_LOAD: libc::c_long = 5;
    // mov64 r0, imm ; exit
    let mut instructions = [0u8; 16];
    instructions[0] = 0xb7;
    instructions[4..8].copy_from_slice(&return_value.to_le_bytes());
    instructions[8] = 0x95;
    let license = c"GPL";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&program_type.to_ne_bytes());
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(instructions.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    let name_bytes = name.as_bytes();
    let length = name_bytes.len().min(15);
    attr[48..48 + length].copy_from_slice(&name_bytes[..length]);
    attr[68..72].copy_from_slice(&expected_attach_type.to_ne_bytes());
    // SAFETY: attr is a zeroed 128-byte bpf_attr; the instructions and license outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_mut_ptr(), 128u32) };
    anyhow::ensure!(
        fd >= 0,
        "cannot load the trivial program {name}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new descriptor the kernel gave us and nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// The id of the program behind a descriptor (`BPF_OBJ_GET_INFO_BY_FD`).
pub fn program_id(program: &impl std::os::fd::AsFd) -> anyhow::Result<u32> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let mut info = [0u32; 64];
    let mut attr = [0u64; 16];
    attr[0] = u64::from(program.as_fd().as_raw_fd() as u32) | ((4 * info.len() as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    // SAFETY: attr is a zeroed bpf_attr; info outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            128u32,
        )
    };
    anyhow::ensure!(
        rc == 0,
        "cannot read program info: {}",
        std::io::Error::last_os_error()
    );
    // struct bpf_prog_info { __u32 type; __u32 id; ... }
    Ok(info[1])
}

/// Creates a `BPF_MAP_TYPE_HASH` map named `name` with these sizes: what another build's map
/// looks like to the kernel. Minimum kernel 4.15 (map names).
pub fn create_hash_map(
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    name: &str,
) -> anyhow::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_MAP_TYPE_HASH.to_ne_bytes());
    attr[4..8].copy_from_slice(&key_size.to_ne_bytes());
    attr[8..12].copy_from_slice(&value_size.to_ne_bytes());
    attr[12..16].copy_from_slice(&max_entries.to_ne_bytes());
    let name_bytes = name.as_bytes();
    let length = name_bytes.len().min(15);
    attr[28..28 + length].copy_from_slice(&name_bytes[..length]);
    // SAFETY: attr is a zeroed 128-byte bpf_attr.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, attr.as_mut_ptr(), 128u32) };
    anyhow::ensure!(
        fd >= 0,
        "cannot create the map {name}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new descriptor the kernel gave us and nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}
