//! ztunnel's kernel programs. Read the files in the order the kernel runs them:
//! outbound `connect.rs` → `sockops.rs` → `getsockopt.rs` (the proxy) and `getpeername.rs` (the
//! application); inbound `tc_ingress.rs`. `return_path.rs` (called by the connect hooks) marks a
//! proxy's original-source connections to its own pod; `bind.rs` keeps ztunnel's in-pod ports.
//! `maps.rs` declares every map; `helpers.rs` holds what the hooks share.
#![no_std]
#![no_main]

mod bind;
mod connect;
mod getpeername;
mod getsockopt;
mod helpers;
mod maps;
mod return_path;
mod sockops;
mod tc_ingress;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual BSD/GPL\0";
