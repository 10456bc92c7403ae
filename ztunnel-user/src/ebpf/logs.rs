//! Forwards aya-log records from the kernel programs into `tracing` (target `ztunnel::ebpf`).

use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;

/// A `log::Log` that re-emits records as `tracing` events.
#[derive(Debug, Clone, Copy)]
pub struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _metadata: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args().to_string();
        match record.level() {
            log::Level::Error => tracing::error!(target: "ztunnel::ebpf", "{message}"),
            log::Level::Warn => tracing::warn!(target: "ztunnel::ebpf", "{message}"),
            log::Level::Info => tracing::info!(target: "ztunnel::ebpf", "{message}"),
            log::Level::Debug => tracing::debug!(target: "ztunnel::ebpf", "{message}"),
            log::Level::Trace => tracing::trace!(target: "ztunnel::ebpf", "{message}"),
        }
    }

    fn flush(&self) {}
}

/// Reads kernel log records whenever the ring buffer has data, until the task is dropped.
pub async fn forward(logger: EbpfLogger<TracingLog>) {
    // SAFETY: the fd is the logger's ring buffer map, owned by `logger`, which the AsyncFd owns
    // for as long as it is registered.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut logger = match registered {
        Ok(logger) => logger,
        Err(error) => {
            let error = error.to_string();
            tracing::warn!(%error, "cannot watch the kernel log ring buffer; kernel logs are not forwarded");
            return;
        }
    };
    loop {
        let Ok(mut ready) = logger.readable_mut().await else {
            return;
        };
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}
