//! A pod's in-pod listeners and their accept loops:
//!
//! | listener | address (in the pod netns) | hands over to |
//! |---|---|---|
//! | outbound | 127.0.0.1:15001, [::1]:15001 | [`PodTrafficHandler::outbound`] |
//! | inbound plaintext | 0.0.0.0:15006, [::]:15006, `IP_TRANSPARENT` | [`PodTrafficHandler::inbound_plaintext`] |
//! | HBONE | each pod IP :15008 | [`PodTrafficHandler::inbound_hbone`] |
//!
//! Dropping [`PodListeners`] closes them all; the kernel then sees no listener and applies the
//! node's fail mode to the pod — unless another daemon's listeners share the ports (an upgrade,
//! [`super::takeover`]): every listener is `SO_REUSEPORT`, and `tcp_migrate_req` is on in the pod,
//! so the closing listener's queued connections move to the other daemon's.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use tokio::{net::TcpListener, task::JoinSet};
use ztunnel_common::constants::{HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};

use super::{
    InpodError,
    capture::CaptureMode,
    handler::{PodContext, PodTrafficHandler},
    original_destination::original_destination,
    socket_factory::{enable_request_migration, listen_in},
};
use crate::ebpf::PinnedMaps;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Outbound,
    InboundPlaintext,
    Hbone,
}

/// The open listeners of one pod; dropping this closes them and stops their accept loops
/// (connections already handed over keep running).
pub struct PodListeners {
    _accept_loops: JoinSet<()>,
}

impl PodListeners {
    /// Opens every listener of `pod` and starts accepting. IPv6 listeners that cannot be opened
    /// (IPv6 disabled in the pod) are skipped with a warning; any IPv4 failure is an error.
    pub fn open(
        pod: Arc<PodContext>,
        handler: Arc<dyn PodTrafficHandler>,
        maps: Arc<PinnedMaps>,
        capture: CaptureMode,
    ) -> Result<Self, InpodError> {
        let mut wanted = vec![
            (
                SocketAddr::from((Ipv4Addr::LOCALHOST, OUTBOUND_PORT)),
                Role::Outbound,
                false,
            ),
            (
                SocketAddr::from((Ipv6Addr::LOCALHOST, OUTBOUND_PORT)),
                Role::Outbound,
                false,
            ),
            (
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, INBOUND_PLAINTEXT_PORT)),
                Role::InboundPlaintext,
                true,
            ),
            (
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, INBOUND_PLAINTEXT_PORT)),
                Role::InboundPlaintext,
                true,
            ),
        ];
        wanted.extend(
            pod.ips
                .iter()
                .map(|ip| (SocketAddr::new(*ip, HBONE_PORT), Role::Hbone, false)),
        );
        if let Err(error) = enable_request_migration(&pod.netns) {
            tracing::warn!(pod = %pod.name, namespace = %pod.namespace, %error, "cannot set net.ipv4.tcp_migrate_req in the pod (kernel < 5.14?); an upgrade may reset connections queued on the old daemon's listeners");
        }
        let mut accept_loops = JoinSet::new();
        for (address, role, transparent) in wanted {
            let listener = match listen_in(&pod.netns, address, transparent)
                .and_then(TcpListener::from_std)
            {
                Ok(listener) => listener,
                // Loopback and wildcard IPv6 listeners are optional (IPv6 may be off in the pod);
                // a listener on one of the pod's own IPs is not.
                Err(error) if address.is_ipv6() && role != Role::Hbone => {
                    tracing::warn!(pod = %pod.name, namespace = %pod.namespace, %address, %error, "IPv6 listener unavailable in pod; IPv6 capture off for it");
                    continue;
                }
                Err(source) => {
                    return Err(InpodError::Listen {
                        pod: format!("{}/{}", pod.namespace, pod.name),
                        address,
                        source,
                    });
                }
            };
            tracing::debug!(pod = %pod.name, namespace = %pod.namespace, %address, ?role, "in-pod listener open");
            accept_loops.spawn(accept_loop(
                listener,
                role,
                pod.clone(),
                handler.clone(),
                maps.clone(),
                capture,
            ));
        }
        Ok(Self {
            _accept_loops: accept_loops,
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    role: Role,
    pod: Arc<PodContext>,
    handler: Arc<dyn PodTrafficHandler>,
    maps: Arc<PinnedMaps>,
    capture: CaptureMode,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(pod = %pod.name, namespace = %pod.namespace, %error, ?role, "accept failed");
                continue;
            }
        };
        let local = match stream.local_addr() {
            Ok(local) => local,
            Err(error) => {
                tracing::warn!(pod = %pod.name, %error, "accepted socket has no local address; closing");
                continue;
            }
        };
        let work = match role {
            Role::Outbound => {
                let destination = match capture {
                    CaptureMode::Ebpf => outbound_destination(&stream, peer, local, &pod, &maps),
                    CaptureMode::Iptables => conntrack_destination(&stream, peer, local, &pod),
                };
                let Some(destination) = destination else {
                    continue;
                };
                handler.outbound(pod.clone(), stream, destination)
            }
            Role::InboundPlaintext => {
                // eBPF hands the connection over unchanged (TPROXY semantics); iptables
                // REDIRECT rewrote the destination, which conntrack remembers.
                let destination = match capture {
                    CaptureMode::Ebpf => Some(local),
                    CaptureMode::Iptables => conntrack_destination(&stream, peer, local, &pod),
                };
                let Some(destination) = destination else {
                    continue;
                };
                tracing::info!(pod = %pod.name, namespace = %pod.namespace, %peer, original_destination = %destination, "inbound plaintext connection captured");
                handler.inbound_plaintext(pod.clone(), stream, destination)
            }
            Role::Hbone => {
                tracing::debug!(pod = %pod.name, namespace = %pod.namespace, %peer, local_address = %local, "inbound HBONE connection accepted");
                handler.inbound_hbone(pod.clone(), stream)
            }
        };
        tokio::spawn(work);
    }
}

/// The original destination of a connection iptables redirected: `SO_ORIGINAL_DST`, answered
/// by conntrack. A connection that was not redirected (someone dialled the listener directly)
/// has none and is closed.
fn conntrack_destination(
    stream: &tokio::net::TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    pod: &PodContext,
) -> Option<SocketAddr> {
    match original_destination(stream, local.is_ipv6()) {
        Ok(destination) if destination != local => {
            tracing::info!(pod = %pod.name, namespace = %pod.namespace, %peer, original_destination = %destination, "connection captured by iptables");
            Some(destination)
        }
        outcome => {
            tracing::warn!(pod = %pod.name, namespace = %pod.namespace, %peer, %local, ?outcome, "connection without an iptables original destination; closing");
            None
        }
    }
}

/// The original destination from `getsockopt(SO_ORIGINAL_DST)`, cross-checked with the
/// `orig_dst` map. Disagreement or absence closes the connection (nothing goes out unchecked).
fn outbound_destination(
    stream: &tokio::net::TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    pod: &PodContext,
    maps: &PinnedMaps,
) -> Option<SocketAddr> {
    let from_sockopt = original_destination(stream, local.is_ipv6());
    let from_map = maps.original_destination(pod.netns_cookie, peer, local);
    match (&from_sockopt, from_map) {
        (Ok(sockopt), Some(map)) if *sockopt == map => {
            tracing::info!(pod = %pod.name, namespace = %pod.namespace, %peer, sockopt_destination = %sockopt, map_destination = %map, "outbound connection captured");
            Some(map)
        }
        _ => {
            tracing::warn!(pod = %pod.name, namespace = %pod.namespace, %peer, sockopt_destination = ?from_sockopt, map_destination = ?from_map, "outbound connection without a consistent original destination; closing");
            None
        }
    }
}
