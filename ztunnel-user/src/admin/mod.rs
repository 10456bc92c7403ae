//! Admin, metrics and readiness servers.
