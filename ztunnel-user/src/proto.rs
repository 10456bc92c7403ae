//! The Rust types generated from `proto/` by `build.rs` (prost messages, tonic clients and
//! servers). One module per protobuf package, nested as the package names are.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// Envoy's API.
pub mod envoy {
    /// `envoy.service.*`.
    pub mod service {
        /// `envoy.service.discovery.*`.
        pub mod discovery {
            /// `envoy.service.discovery.v3`: the delta ADS stream.
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
            }
        }
    }
}

/// Istio's APIs.
pub mod istio {
    /// `istio.workload`: workloads and services.
    pub mod workload {
        include!(concat!(env!("OUT_DIR"), "/istio.workload.rs"));
    }
    /// `istio.security`: L4 authorization policies.
    pub mod security {
        include!(concat!(env!("OUT_DIR"), "/istio.security.rs"));
    }
    /// `istio.v1.auth`: the certificate service.
    pub mod v1 {
        /// `istio.v1.auth`.
        pub mod auth {
            include!(concat!(env!("OUT_DIR"), "/istio.v1.auth.rs"));
        }
    }
}
