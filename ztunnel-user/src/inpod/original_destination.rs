//! Reading the original destination of a captured outbound connection the way any proxy would:
//! `getsockopt(SO_ORIGINAL_DST)`, answered by our `cgroup/getsockopt` program.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::AsRawFd,
};

use ztunnel_common::constants::{IP6T_SO_ORIGINAL_DST, SO_ORIGINAL_DST, SOL_IP, SOL_IPV6};

/// The original destination of an accepted outbound connection. Minimum kernel 5.15 (our
/// getsockopt hook); without it the kernel answers `ENOPROTOOPT`/`ENOENT`.
pub fn original_destination(socket: &impl AsRawFd, ipv6: bool) -> io::Result<SocketAddr> {
    if ipv6 {
        // SAFETY: an all-zero sockaddr_in6 is valid.
        let mut address: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut length = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: valid fd; out-parameters are live and sized by `length`.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                SOL_IPV6,
                IP6T_SO_ORIGINAL_DST,
                (&mut address as *mut libc::sockaddr_in6).cast(),
                &mut length,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(address.sin6_addr.s6_addr),
            u16::from_be(address.sin6_port),
            0,
            0,
        )))
    } else {
        // SAFETY: an all-zero sockaddr_in is valid.
        let mut address: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut length = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: valid fd; out-parameters are live and sized by `length`.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                SOL_IP,
                SO_ORIGINAL_DST,
                (&mut address as *mut libc::sockaddr_in).cast(),
                &mut length,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(address.sin_addr.s_addr.to_ne_bytes()),
            u16::from_be(address.sin_port),
        )))
    }
}
