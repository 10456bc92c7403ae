//! Returning freed heap memory to the kernel.
//!
//! glibc's allocator keeps memory a burst of connections freed inside its arenas for reuse and
//! gives back only what sits at the top of each heap. After 10,000 tunnels opened and closed, a
//! node proxy measured here held ~220 MiB of such free memory (RSS 250 MiB against 30 MiB
//! before the burst); `malloc_trim(0)` returned all but ~4 MiB of it. So the daemon trims
//! periodically: a node's RSS then follows its load back down, as operators expect from a
//! DaemonSet sized by its memory limit. (Istio's ztunnel gets the same from jemalloc's decay.)
//!
//! The other half is the opposite: between two trims, memory freed on the data path must be
//! reused, not returned. h2 reads every DATA frame into a fresh buffer while the previous
//! frames are still being written out, so a 256 KiB frame is a 256 KiB allocation; by default
//! glibc serves that with `mmap` (or trims it off the heap top as soon as it is freed), and
//! every forwarded byte then lands on a page the kernel must fault in and zero. The perf profile
//! of `cargo xtask bench hbone` showed one page fault per 4–7 KiB forwarded (156,000 for 1 GiB)
//! and `clear_page` among the top symbols. [`keep_freed_memory_for_reuse`] raises both glibc
//! thresholds so those buffers are recycled inside the arenas (about 3,000 page faults for the
//! same GiB), and the periodic trim returns what a burst left behind.

use std::time::Duration;

/// Allocations up to this size come from the arenas rather than their own `mmap`: an h2 read
/// buffer for the largest frame we accept (1 MiB), with room to grow.
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD: i32 = 2 * 1024 * 1024;
/// Free memory an arena keeps at its top before `free` gives it back. Several frames' worth, so
/// a busy tunnel does not trim and re-fault on every frame; small enough that the tokio
/// workers' arenas (whose top `malloc_trim` does not release) keep at most this much after a
/// burst. With 64 MiB, one soak-test run left a node proxy 15 MiB above its starting RSS, against
/// 2–11 MiB with this value.
#[cfg(target_env = "gnu")]
const TRIM_THRESHOLD: i32 = 8 * 1024 * 1024;

/// Makes glibc keep freed data-path buffers for reuse until the next periodic release (see the
/// module documentation). Call once at start, before the runtime's threads exist. A no-op
/// where the C library is not glibc.
pub fn keep_freed_memory_for_reuse() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only sets allocator parameters; both values are within glibc's bounds
        // (the mmap threshold may be at most 32 MiB on 64-bit).
        let set = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        };
        if !set {
            tracing::warn!(
                "glibc refused the allocator thresholds; data-path buffers may be page-faulted in afresh"
            );
        }
    }
}

/// Calls `malloc_trim(0)` every `period` on a blocking thread, for the life of the runtime.
/// A no-op where the C library is not glibc.
pub fn spawn_periodic_release(period: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            // The walk over every arena takes milliseconds with a large heap: off the workers.
            let _ = tokio::task::spawn_blocking(release_free_memory).await;
        }
    })
}

#[cfg(target_env = "gnu")]
fn release_free_memory() {
    // SAFETY: malloc_trim only walks and madvises the allocator's own free chunks.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::trace!(
        released = released != 0,
        "returned free heap memory to the kernel"
    );
}

#[cfg(not(target_env = "gnu"))]
fn release_free_memory() {}
