//! ztunnel's kernel programs. Read the files in the order the kernel runs them:
//! outbound `connect.rs` → `sockops.rs` → `getsockopt.rs`; inbound `tc_ingress.rs`.
//! `maps.rs` declares every map; `helpers.rs` holds what the hooks share.
#![no_std]
#![no_main]

mod connect;
mod getsockopt;
mod helpers;
mod maps;
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
