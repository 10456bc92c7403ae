//! End-to-end harness: simulated nodes and pods in network namespaces, a private bpffs, a test
//! cgroup, the ztunnel daemon and real clients — all named with a per-run prefix and torn down
//! in `Drop`, even when a test fails.
//!
//! ```no_run
//! use ztunnel_e2e::{TestEnv, ztunnel::Daemon};
//! let env = TestEnv::new("example")?;            // prefix, cgroup, bpffs, run dir
//! let node = env.node(1)?;                        // netns with a bridge, 198.18.1.0/24
//! let client = node.pod("client", 10)?;           // netns + veth eth0, 198.18.1.10
//! let daemon = Daemon::start(&env, &[])?;         // in the test cgroup, waits until ready
//! env.enroll(&client)?;
//! daemon.wait_serving(&client)?;
//! let output = env.run_in_pod(&client, &["curl", "-sS", "http://198.18.1.20:8080/"])?;
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod apps;
pub mod ca_service;
pub mod cluster;
pub mod cni_runtime;
pub mod control_plane;
pub mod echo;
pub mod env;
pub mod four_pods;
pub mod kernel;
pub mod net;
pub mod probe;
pub mod process;
pub mod relay;
pub mod server;
pub mod traffic;
pub mod wait;
pub mod waypoint;
pub mod ztunnel;

pub use env::TestEnv;
pub use net::{Node, Pod};
