//! Endpoint choice: round robin per service, skipping endpoints that refused a connection recently.
//!
//! One balancer lives for the whole process and is shared by every configuration snapshot, so
//! a reload neither resets the rotation nor forgets which endpoints are refusing.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// How long an endpoint that refused a connection is skipped.
pub const DEFAULT_REFUSED_HOLDOFF: Duration = Duration::from_secs(10);

/// Round-robin positions and refusal marks.
#[derive(Debug)]
pub struct EndpointBalancer {
    holdoff: Duration,
    inner: Mutex<BalancerState>,
}

#[derive(Debug, Default)]
struct BalancerState {
    next_index: HashMap<String, usize>,
    refused_at: HashMap<SocketAddr, Instant>,
}

impl Default for EndpointBalancer {
    fn default() -> Self {
        Self::new(DEFAULT_REFUSED_HOLDOFF)
    }
}

impl EndpointBalancer {
    /// A balancer that skips a refusing endpoint for `holdoff`.
    pub fn new(holdoff: Duration) -> Self {
        Self {
            holdoff,
            inner: Mutex::new(BalancerState::default()),
        }
    }

    /// Picks the index of one of `candidates` (addresses in a stable order) for the rotation
    /// named `rotation`. Endpoints that refused within the hold-off are skipped; when all of
    /// them did, the rotation goes on regardless, since refusing to try at all helps nobody.
    pub fn pick(&self, rotation: &str, candidates: &[SocketAddr]) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let now = Instant::now();
        let mut state = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let holdoff = self.holdoff;
        state
            .refused_at
            .retain(|_, refused| now.duration_since(*refused) < holdoff);
        let start = state.next_index.get(rotation).copied().unwrap_or(0) % candidates.len();
        let chosen = (0..candidates.len())
            .map(|offset| (start + offset) % candidates.len())
            .find(|index| !state.refused_at.contains_key(&candidates[*index]))
            .unwrap_or_else(|| {
                tracing::warn!(
                    rotation,
                    endpoints = candidates.len(),
                    "every endpoint refused recently; trying one anyway"
                );
                start
            });
        state.next_index.insert(rotation.to_owned(), chosen + 1);
        Some(chosen)
    }

    /// Records that `address` refused a connection just now.
    pub fn mark_refused(&self, address: SocketAddr) {
        tracing::info!(%address, holdoff_secs = self.holdoff.as_secs(), "endpoint refused; skipping it for a while");
        let mut state = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.refused_at.insert(address, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(count: u8) -> Vec<SocketAddr> {
        (1..=count)
            .map(|last| SocketAddr::from(([198, 18, 0, last], 80)))
            .collect()
    }

    #[test]
    fn rotates_through_every_endpoint() {
        let balancer = EndpointBalancer::default();
        let candidates = addresses(3);
        let picks: Vec<_> = (0..6)
            .map(|_| balancer.pick("svc", &candidates).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn skips_an_endpoint_that_refused_recently() {
        let balancer = EndpointBalancer::default();
        let candidates = addresses(3);
        balancer.mark_refused(candidates[1]);
        let picks: Vec<_> = (0..4)
            .map(|_| balancer.pick("svc", &candidates).unwrap())
            .collect();
        assert_eq!(picks, [0, 2, 0, 2]);
    }

    #[test]
    fn refused_endpoint_comes_back_after_the_holdoff() {
        let balancer = EndpointBalancer::new(Duration::ZERO);
        let candidates = addresses(2);
        balancer.mark_refused(candidates[1]);
        let picks: Vec<_> = (0..2)
            .map(|_| balancer.pick("svc", &candidates).unwrap())
            .collect();
        assert_eq!(picks, [0, 1]);
    }

    #[test]
    fn all_refused_still_picks_one() {
        let balancer = EndpointBalancer::default();
        let candidates = addresses(2);
        candidates
            .iter()
            .for_each(|address| balancer.mark_refused(*address));
        assert!(balancer.pick("svc", &candidates).is_some());
        assert_eq!(balancer.pick("svc", &[]), None);
    }
}
