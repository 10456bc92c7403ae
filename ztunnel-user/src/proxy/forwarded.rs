//! Which source address an inbound HBONE stream is credited with.
//!
//! A `CONNECT` may carry `forwarded: for="ip:port"`, the original client. Only a peer whose
//! identity forwards for others — a waypoint — is believed: everything else is credited with
//! the address its TCP connection comes from. In-pod, a sending ztunnel opens its HBONE
//! connections inside the source pod's netns, so they leave from the pod's own address and its
//! `for=` names that same address (with the application's port). A peer that names another
//! address asserts a source it does not have, and its stream is refused (`401`): policy
//! (`sourceIps`), the access log and metrics must never see an address a client merely
//! asserted.
//!
//! Istio's ztunnel reaches the same place by never reading `for=` on inbound: its logs and
//! policy take the TCP peer. Ours also keeps a waypoint's `for=`, so that the application and
//! policy behind a waypoint see the original client.

use std::net::SocketAddr;

/// A stream asserted a source address that its connection does not come from, and its peer may
/// not forward for others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "peer {peer} asserted source {claimed} (forwarded: for=), an address it does not connect from, \
     and its identity is not one that forwards for others (a waypoint)"
)]
pub struct UntrustedForwarded {
    /// The TCP peer of the HBONE connection.
    pub peer: SocketAddr,
    /// The `for=` address it asserted.
    pub claimed: SocketAddr,
}

/// The source address a stream from `peer` that asserted `forwarded_for` is credited with.
/// `may_forward` says whether the peer's identity forwards for others; it is asked only when
/// the assertion names another address than the peer's.
pub fn credited_source(
    peer: SocketAddr,
    forwarded_for: Option<SocketAddr>,
    may_forward: impl FnOnce() -> bool,
) -> Result<SocketAddr, UntrustedForwarded> {
    let peer_ip = peer.ip().to_canonical();
    let Some(claimed) = forwarded_for else {
        return Ok(SocketAddr::new(peer_ip, peer.port()));
    };
    if claimed.ip().to_canonical() == peer_ip {
        // The port is the application's: more use in a log than the tunnel's own.
        return Ok(SocketAddr::new(peer_ip, claimed.port()));
    }
    if may_forward() {
        return Ok(claimed);
    }
    Err(UntrustedForwarded { peer, claimed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> SocketAddr {
        text.parse().expect("socket address")
    }

    #[test]
    fn without_forwarded_the_connection_is_the_source() {
        let peer = address("198.18.1.2:40000");
        assert_eq!(credited_source(peer, None, || false), Ok(peer));
    }

    #[test]
    fn forwarded_naming_the_peer_itself_keeps_the_application_port() {
        let peer = address("198.18.1.2:40000");
        let claimed = address("198.18.1.2:51234");
        assert_eq!(credited_source(peer, Some(claimed), || false), Ok(claimed));
        // An IPv4 peer on a dual-stack listener shows as ::ffff:a.b.c.d.
        let mapped = address("[::ffff:198.18.1.2]:40000");
        assert_eq!(
            credited_source(mapped, Some(claimed), || false),
            Ok(claimed)
        );
    }

    #[test]
    fn another_address_is_believed_only_from_a_forwarder() {
        let peer = address("198.18.1.2:40000");
        let claimed = address("203.0.113.7:1234");
        assert_eq!(
            credited_source(peer, Some(claimed), || false),
            Err(UntrustedForwarded { peer, claimed })
        );
        assert_eq!(credited_source(peer, Some(claimed), || true), Ok(claimed));
    }
}
