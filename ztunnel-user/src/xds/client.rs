//! The delta ADS stream: subscribe to every workload, service and policy (wildcard), apply each
//! response, ACK it (or NACK it with the errors), and reconnect with jittered exponential
//! backoff when the stream ends. While istiod is away the last state stays in force.

use std::{
    collections::BTreeSet,
    hash::{BuildHasher, Hasher},
    time::Duration,
};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::{
    XdsConfig, XdsError,
    status::{Nack, XdsStatus},
    store::{ResourceStore, TYPE_URLS},
    transport,
};
use crate::{
    admin::ReadinessBlocker,
    proto::envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, Status,
        aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
    },
    state::StateHandle,
};

/// The first reconnect delay; doubled after each failure up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// The longest reconnect delay (Istio's ztunnel uses the same cap).
const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// istiod sends every workload of the cluster in one response: allow large messages.
const MAX_MESSAGE_BYTES: usize = 200 * 1024 * 1024;
/// gRPC's INVALID_ARGUMENT, the code a NACK carries.
const INVALID_ARGUMENT: i32 = 3;

/// The running client.
pub struct XdsClient {
    config: XdsConfig,
    store: ResourceStore,
    state: StateHandle,
    status: watch::Sender<XdsStatus>,
    /// Released once every type has had a response applied (the first full push).
    ready: Option<ReadinessBlocker>,
    awaiting_first_push: BTreeSet<&'static str>,
}

impl XdsClient {
    /// A client that will keep `state` current; `ready` is released after the first full push.
    pub fn new(config: XdsConfig, state: StateHandle, ready: Option<ReadinessBlocker>) -> Self {
        let (status, _) = watch::channel(XdsStatus {
            address: config.address.text.clone(),
            ..XdsStatus::default()
        });
        Self {
            config,
            store: ResourceStore::default(),
            state,
            status,
            ready,
            awaiting_first_push: TYPE_URLS.into_iter().collect(),
        }
    }

    /// Notified whenever the status changes (for `/config_dump`).
    pub fn subscribe(&self) -> watch::Receiver<XdsStatus> {
        self.status.subscribe()
    }

    /// Runs forever: one stream after another.
    pub async fn run(mut self) {
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let outcome = self.run_stream().await;
            self.status.send_modify(|status| status.connected = false);
            match outcome {
                Ok(StreamEnd::ByServer { had_responses }) => {
                    tracing::warn!(address = %self.config.address.text, "xDS stream closed by the control plane; reconnecting");
                    if had_responses {
                        backoff = INITIAL_BACKOFF;
                    }
                }
                Err(error) => {
                    tracing::warn!(address = %self.config.address.text, %error, retry_in = ?backoff, "xDS stream failed; keeping the last state");
                    self.status
                        .send_modify(|status| status.last_error = Some(error.to_string()));
                }
            }
            tokio::time::sleep(jittered(backoff)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn run_stream(&mut self) -> Result<StreamEnd, XdsError> {
        let channel = transport::connect(&self.config.address, self.config.tls.clone()).await?;
        let (requests, outgoing) = mpsc::channel::<DeltaDiscoveryRequest>(TYPE_URLS.len() + 8);
        for type_url in TYPE_URLS {
            let initial = DeltaDiscoveryRequest {
                node: Some(self.config.node.to_proto()),
                type_url: type_url.to_owned(),
                // Wildcard: no names subscribed means every resource of the type.
                initial_resource_versions: self.store.versions(type_url).into_iter().collect(),
                ..DeltaDiscoveryRequest::default()
            };
            requests
                .send(initial)
                .await
                .map_err(|_| XdsError::StreamClosed)?;
        }
        let mut request = tonic::Request::new(ReceiverStream::new(outgoing));
        transport::insert_auth_headers(
            &mut request,
            self.config.token_file.as_deref(),
            &self.config.cluster_id,
        )?;
        let mut responses = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .delta_aggregated_resources(request)
            .await
            .map_err(|status| XdsError::Stream(status.to_string()))?
            .into_inner();
        tracing::info!(address = %self.config.address.text, "xDS stream open");
        self.status.send_modify(|status| {
            status.connected = true;
            status.connections += 1;
        });
        let mut had_responses = false;
        while let Some(response) = responses
            .message()
            .await
            .map_err(|status| XdsError::Stream(status.to_string()))?
        {
            had_responses = true;
            let reply = self.handle(&response);
            requests
                .send(reply)
                .await
                .map_err(|_| XdsError::StreamClosed)?;
        }
        Ok(StreamEnd::ByServer { had_responses })
    }

    /// Applies one response and returns its ACK or NACK.
    fn handle(&mut self, response: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        let type_url = response.type_url.clone();
        let error = match self.store.apply(response) {
            Ok(applied) => {
                let summary = crate::config::reload::summary(&applied.state);
                self.state.replace(applied.state);
                tracing::info!(
                    type_url = %type_url,
                    version = %response.system_version_info,
                    updated = response.resources.len(),
                    removed = response.removed_resources.len(),
                    rejected = applied.rejected.len(),
                    state = %summary,
                    "xDS update applied"
                );
                if self.awaiting_first_push.remove(type_url.as_str())
                    && self.awaiting_first_push.is_empty()
                    && let Some(ready) = self.ready.take()
                {
                    ready.release();
                }
                let errors: Vec<String> =
                    applied.rejected.iter().map(ToString::to_string).collect();
                (!errors.is_empty()).then(|| errors.join("; "))
            }
            Err(error) => Some(error.to_string()),
        };
        let resources = self.store.len(&type_url);
        self.status.send_modify(|status| {
            let entry = status.types.entry(type_url.clone()).or_default();
            entry.resources = resources;
            entry.last_nonce = response.nonce.clone();
            match &error {
                None => {
                    entry.acks += 1;
                    entry.last_version = response.system_version_info.clone();
                }
                Some(error) => {
                    entry.nacks += 1;
                    entry.last_nack = Some(Nack::now(&response.nonce, error));
                }
            }
        });
        if let Some(error) = &error {
            tracing::warn!(type_url = %type_url, nonce = %response.nonce, %error, "xDS update rejected (NACK); the rest of it, if any, applied");
        }
        DeltaDiscoveryRequest {
            type_url,
            response_nonce: response.nonce.clone(),
            error_detail: error.map(|message| Status {
                code: INVALID_ARGUMENT,
                message,
                details: Vec::new(),
            }),
            ..DeltaDiscoveryRequest::default()
        }
    }
}

enum StreamEnd {
    ByServer { had_responses: bool },
}

/// A delay between half of `backoff` and all of it, so that the nodes of a cluster do not all
/// reconnect to a restarted istiod at the same instant.
fn jittered(backoff: Duration) -> Duration {
    // A fresh `RandomState` is seeded from the OS: enough randomness for spreading reconnects.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = backoff / 2;
    half + half.mul_f64((random % 1000) as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_between_half_and_full_backoff() {
        for _ in 0..100 {
            let delay = jittered(Duration::from_secs(2));
            assert!(
                delay >= Duration::from_secs(1) && delay <= Duration::from_secs(2),
                "{delay:?}"
            );
        }
    }
}
