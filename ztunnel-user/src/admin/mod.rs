//! The operations surface: admin (`/config_dump`, localhost only), Prometheus `/metrics` and
//! `/healthz/ready`, each on its own listener and task, apart from the data path.

pub mod metrics;

pub use metrics::{
    ConnectionLabels, IdentityFailureReason, Metrics, Reporter, ResponseFlags, SecurityPolicy,
};
