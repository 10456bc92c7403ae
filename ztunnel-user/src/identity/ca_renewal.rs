//! Keeps the certificates Istio's CA signs in force: an identity asked for is fetched at once,
//! each certificate is renewed at half its lifetime (as Istio's ztunnel does), and a failed
//! request is retried with jittered exponential backoff while the certificate in force (if
//! any) stays in use — a CA outage costs nothing until certificates expire.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

use super::{CertificateStore, SpiffeId, ca_client::CaClient, store::CertificateSource};

/// First retry delay after a failed request.
pub const RETRY_MIN: Duration = Duration::from_millis(200);
/// Longest retry delay.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// Starts the renewal task when `store`'s certificates come from Istio's CA.
pub fn spawn(store: Arc<CertificateStore>) -> Option<tokio::task::JoinHandle<()>> {
    let CertificateSource::IstioCa { client } = store.source() else {
        return None;
    };
    let client = client.clone();
    Some(tokio::spawn(run(store, client)))
}

/// When an identity may be asked for again, and the delay that led there.
struct Backoff {
    at: Instant,
    delay: Duration,
}

async fn run(store: Arc<CertificateStore>, client: Arc<CaClient>) {
    let mut backoff: HashMap<SpiffeId, Backoff> = HashMap::new();
    loop {
        let now = Instant::now();
        let (due, next) = schedule(&store, &backoff, now);
        for identity in &due {
            match client.fetch(identity).await {
                Ok(certificate) => {
                    backoff.remove(identity);
                    store.install(certificate);
                }
                Err(error) => {
                    let delay = backoff
                        .get(identity)
                        .map_or(RETRY_MIN, |last| (last.delay * 2).min(RETRY_MAX));
                    let wait = jittered(delay);
                    let in_force = store.has_certificate(identity);
                    tracing::warn!(%identity, ca = client.address(), %error, retry_in = ?wait,
                        certificate_in_force = in_force,
                        "cannot get a certificate from Istio's CA; retrying (the certificate in force, if any, stays)");
                    backoff.insert(
                        identity.clone(),
                        Backoff {
                            at: Instant::now() + wait,
                            delay,
                        },
                    );
                }
            }
        }
        if !due.is_empty() {
            continue;
        }
        let sleep = tokio::time::sleep_until(next.unwrap_or(now + RETRY_MAX));
        tokio::select! {
            () = store.wake.notified() => {}
            () = sleep => {}
        }
    }
}

/// The identities to ask for now, and when the next one falls due.
fn schedule(
    store: &CertificateStore,
    backoff: &HashMap<SpiffeId, Backoff>,
    now: Instant,
) -> (Vec<SpiffeId>, Option<Instant>) {
    let system_now = SystemTime::now();
    let mut wanted_at: Vec<(SpiffeId, Instant)> = store
        .wanted()
        .into_iter()
        .map(|identity| (identity, now))
        .collect();
    for certificate in store.certificates() {
        let lifetime = certificate
            .not_after
            .duration_since(certificate.not_before)
            .unwrap_or(Duration::ZERO);
        let renew_at = certificate.not_before + lifetime / 2;
        let wait = renew_at
            .duration_since(system_now)
            .unwrap_or(Duration::ZERO);
        // Due and needed by nobody (its pods left): dropped instead of renewed.
        if wait.is_zero() && !store.is_leased(&certificate.identity) {
            store.forget(&certificate.identity);
            continue;
        }
        wanted_at.push((certificate.identity.clone(), now + wait));
    }
    let mut due = Vec::new();
    let mut next: Option<Instant> = None;
    for (identity, at) in wanted_at {
        let at = backoff.get(&identity).map_or(at, |retry| at.max(retry.at));
        if at <= now {
            due.push(identity);
        } else {
            next = Some(next.map_or(at, |next| next.min(at)));
        }
    }
    (due, next)
}

/// `delay` plus up to half of it again, so that many nodes do not retry in step.
fn jittered(delay: Duration) -> Duration {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut byte = [0u8; 1];
    let fraction = match SystemRandom::new().fill(&mut byte) {
        Ok(()) => f64::from(byte[0]) / 255.0,
        Err(_) => 0.5,
    };
    delay + delay.mul_f64(fraction / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_between_the_delay_and_half_again() {
        for _ in 0..100 {
            let wait = jittered(Duration::from_secs(2));
            assert!(
                wait >= Duration::from_secs(2) && wait <= Duration::from_secs(3),
                "{wait:?}"
            );
        }
    }
}
