//! The async runtime the data path runs on: a fixed number of worker threads.
//!
//! Without a number, tokio starts one worker per CPU, so a node proxy on a 96-core node would
//! run 96 of them beside the pods it serves. Istio's ztunnel runs two unless told otherwise, and
//! so does this one; give it as many as the CPUs its pod may use (its CPU limit). On this
//! project's 2-core bench machine the default is what tokio chose before, and one worker instead
//! of two measured no steadier gain (README, Benchmarks).

use std::{io, num::NonZeroUsize};

use clap::Args;

/// Worker threads unless configured: Istio's ztunnel default.
pub const DEFAULT_WORKER_THREADS: NonZeroUsize = NonZeroUsize::new(2).unwrap();

/// How the async runtime is sized.
#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// Threads that run the proxy (the admin servers have their own). Set it to the CPUs the
    /// proxy may use.
    #[arg(long, default_value_t = DEFAULT_WORKER_THREADS)]
    pub worker_threads: NonZeroUsize,
}

/// A multi-threaded runtime with `args.worker_threads` workers, named `ztunnel-worker`.
pub fn build(args: &RuntimeArgs) -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.worker_threads.get())
        .thread_name("ztunnel-worker")
        .enable_all()
        .build()
}
