//! The three `bpf(2)` commands aya 0.14 does not expose for pinned links: open a pin, read a
//! link's target, and swap a link's program in place (`BPF_LINK_UPDATE`, so an adopted hook is
//! upgraded atomically and never carries two copies of a program).

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// `bpf_link_info.type` of a cgroup link.
pub const LINK_TYPE_CGROUP: u32 = 3;
/// `bpf_link_info.type` of a TCX link.
pub const LINK_TYPE_TCX: u32 = 11;

/// What the kernel says about a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    /// `BPF_LINK_TYPE_*`.
    pub link_type: u32,
    /// Kernel id of the link.
    pub id: u32,
    /// Id of the program the link runs.
    pub program_id: u32,
    /// Cgroup id (cgroup links) or ifindex (TCX links); 0 once the target is gone.
    pub target: u64,
    /// The hook (`bpf_attach_type`) of a cgroup or TCX link; 0 for other link types.
    pub attach_type: u32,
}

fn bpf(command: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-initialised 128-byte buffer, larger than every `bpf_attr` arm used
    // here, and lives for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens a pinned object (`BPF_OBJ_GET`). Minimum kernel 4.4.
pub fn open_pin(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Reads a link's type, program and target (`BPF_OBJ_GET_INFO_BY_FD`). Minimum kernel 5.8.
pub fn link_info(link: &impl AsFd) -> io::Result<LinkInfo> {
    let mut info = [0u64; 12];
    let mut attr = [0u64; 16];
    attr[0] = u64::from(link.as_fd().as_raw_fd() as u32)
        | (u64::try_from(std::mem::size_of_val(&info)).unwrap_or(0) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let link_type = (info[0] & 0xffff_ffff) as u32;
    // The type-specific union: cgroup {u64 cgroup_id; u32 attach_type}, tcx {u32 ifindex;
    // u32 attach_type}.
    let (target, attach_type) = match link_type {
        LINK_TYPE_TCX => (info[2] & 0xffff_ffff, (info[2] >> 32) as u32),
        LINK_TYPE_CGROUP => (info[2], (info[3] & 0xffff_ffff) as u32),
        _ => (info[2], 0),
    };
    Ok(LinkInfo {
        link_type,
        id: (info[0] >> 32) as u32,
        program_id: (info[1] & 0xffff_ffff) as u32,
        target,
        attach_type,
    })
}

/// Replaces the program of a link in place (`BPF_LINK_UPDATE`). Minimum kernel 5.7 (cgroup),
/// 6.6 (TCX).
pub fn replace_link_program(link: &impl AsFd, program: &impl AsFd) -> io::Result<()> {
    let mut attr = [0u64; 16];
    attr[0] = u64::from(link.as_fd().as_raw_fd() as u32)
        | (u64::from(program.as_fd().as_raw_fd() as u32) << 32);
    bpf(BPF_LINK_UPDATE, &mut attr)?;
    Ok(())
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;

/// `bpf_attach_type` of TC ingress through TCX.
pub const ATTACH_TYPE_TCX_INGRESS: u32 = 46;

/// `bpf_attach_type` of the cgroup hooks ztunnel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CgroupAttachType {
    /// `BPF_CGROUP_SOCK_OPS`.
    SockOps = 3,
    /// `BPF_CGROUP_INET4_BIND`.
    Inet4Bind = 8,
    /// `BPF_CGROUP_INET6_BIND`.
    Inet6Bind = 9,
    /// `BPF_CGROUP_INET4_CONNECT`.
    Inet4Connect = 10,
    /// `BPF_CGROUP_INET6_CONNECT`.
    Inet6Connect = 11,
    /// `BPF_CGROUP_GETSOCKOPT`.
    GetSockopt = 21,
    /// `BPF_CGROUP_INET4_GETPEERNAME`.
    Inet4GetPeerName = 29,
    /// `BPF_CGROUP_INET6_GETPEERNAME`.
    Inet6GetPeerName = 30,
}

/// Attaches a program to a cgroup with a new bpf_link (`BPF_LINK_CREATE`; links on one cgroup
/// hook always coexist with others' programs). Minimum kernel 5.7.
pub fn create_cgroup_link(
    program: &impl AsFd,
    cgroup: &impl AsFd,
    attach_type: CgroupAttachType,
) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 16];
    attr[0] = u64::from(program.as_fd().as_raw_fd() as u32)
        | (u64::from(cgroup.as_fd().as_raw_fd() as u32) << 32);
    attr[1] = u64::from(attach_type as u32);
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins an object at `path` on a bpffs (`BPF_OBJ_PIN`). Minimum kernel 4.4.
pub fn pin(object: &impl AsFd, path: &Path) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    attr[1] = u64::from(object.as_fd().as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut attr)?;
    Ok(())
}
