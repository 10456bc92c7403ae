//! Benchmark figure (not a test): time and memory to apply an xDS push of 10,000 workloads and
//! 1,000 services, then one incremental change against that state, through the same
//! [`ResourceStore`] the xDS client uses.
//!
//! `cargo run --release -p ztunnel-user --example xds_push [workloads] [services]`

use std::time::Instant;

use prost::Message;
use ztunnel::{
    proto::{
        envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource},
        istio::workload as pb,
    },
    xds::{ADDRESS_TYPE_URL, store::ResourceStore},
};

/// Resident and peak resident memory of this process, in KiB (from /proc/self/status).
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn resource(name: String, address: pb::Address) -> Resource {
    Resource {
        name,
        version: "1".into(),
        resource: Some(prost_types::Any {
            type_url: ADDRESS_TYPE_URL.into(),
            value: address.encode_to_vec(),
        }),
        ..Resource::default()
    }
}

fn workload(index: u32, services: u32, revision: &str) -> Resource {
    let uid = format!("cluster1//v1/Pod/ns{}/pod-{index}", index % 50);
    let ip = 0xc612_0000u32 + index; // 198.18.0.0/15
    let service = index % services;
    let address = pb::Address {
        r#type: Some(pb::address::Type::Workload(pb::Workload {
            uid: uid.clone(),
            name: format!("pod-{index}"),
            namespace: format!("ns{}", index % 50),
            addresses: vec![ip.to_be_bytes().to_vec()],
            tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
            service_account: format!("sa-{service}"),
            node: format!("node-{}", index % 100),
            canonical_name: format!("app-{service}"),
            canonical_revision: revision.into(),
            workload_name: format!("deploy-{service}"),
            services: [(
                format!("ns{}/svc-{service}.ns.svc.cluster.local", service % 50),
                pb::PortList {
                    ports: vec![pb::Port {
                        service_port: 80,
                        target_port: 8080,
                        app_protocol: 0,
                    }],
                },
            )]
            .into(),
            ..pb::Workload::default()
        })),
    };
    resource(uid, address)
}

fn service(index: u32) -> Resource {
    let namespace = format!("ns{}", index % 50);
    let hostname = format!("svc-{index}.ns.svc.cluster.local");
    let vip = 0xc613_0000u32 + index; // 198.19.0.0/16
    let address = pb::Address {
        r#type: Some(pb::address::Type::Service(pb::Service {
            name: format!("svc-{index}"),
            namespace: namespace.clone(),
            hostname: hostname.clone(),
            addresses: vec![pb::NetworkAddress {
                network: String::new(),
                address: vip.to_be_bytes().to_vec(),
                length: None,
            }],
            ports: vec![pb::Port {
                service_port: 80,
                target_port: 8080,
                app_protocol: 0,
            }],
            ..pb::Service::default()
        })),
    };
    resource(format!("{namespace}/{hostname}"), address)
}

fn main() -> anyhow::Result<()> {
    let mut arguments = std::env::args().skip(1);
    let workloads: u32 = arguments.next().map_or(Ok(10_000), |text| text.parse())?;
    let services: u32 = arguments.next().map_or(Ok(1_000), |text| text.parse())?;
    let mut resources: Vec<Resource> = (0..workloads)
        .map(|i| workload(i, services, "v1"))
        .collect();
    resources.extend((0..services).map(service));
    let full = DeltaDiscoveryResponse {
        type_url: ADDRESS_TYPE_URL.into(),
        resources,
        nonce: "1".into(),
        ..DeltaDiscoveryResponse::default()
    };
    let wire_bytes = full.encoded_len();
    let (rss_before, _) = memory_kib();
    let mut store = ResourceStore::default();
    let started = Instant::now();
    let applied = store.apply(&full)?;
    let full_time = started.elapsed();
    anyhow::ensure!(
        applied.rejected.is_empty(),
        "rejected: {:?}",
        applied.rejected
    );
    let state = applied.state;
    drop(full);
    let (rss_after, peak) = memory_kib();

    let change = DeltaDiscoveryResponse {
        type_url: ADDRESS_TYPE_URL.into(),
        resources: vec![workload(7, services, "v2")],
        nonce: "2".into(),
        ..DeltaDiscoveryResponse::default()
    };
    let started = Instant::now();
    let incremental = store.apply(&change)?;
    let incremental_time = started.elapsed();
    drop(state);
    let removal = DeltaDiscoveryResponse {
        type_url: ADDRESS_TYPE_URL.into(),
        removed_resources: vec!["cluster1//v1/Pod/ns8/pod-8".into()],
        nonce: "3".into(),
        ..DeltaDiscoveryResponse::default()
    };
    let started = Instant::now();
    let removed = store.apply(&removal)?;
    let removal_time = started.elapsed();
    println!(
        "xds_push: workloads={workloads} services={services} push_bytes={wire_bytes} \
         full_push_ms={:.1} incremental_change_ms={:.1} removal_ms={:.1} \
         rss_before_kib={rss_before} rss_after_kib={rss_after} peak_rss_kib={peak} \
         state_workloads={} state_services={}",
        full_time.as_secs_f64() * 1e3,
        incremental_time.as_secs_f64() * 1e3,
        removal_time.as_secs_f64() * 1e3,
        removed.state.workloads().count(),
        incremental.state.services().count(),
    );
    Ok(())
}
