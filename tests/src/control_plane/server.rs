//! A delta ADS server fed from a [`Snapshot`]: on subscription it sends every resource the
//! client does not already hold at that version (and removals for what it holds that is gone),
//! then one response per changed type whenever the snapshot changes. It logs every request
//! (`ACK`/`NACK` with the nonce and the error) on stdout, where tests read them.

use std::{collections::BTreeMap, pin::Pin, sync::Arc};

use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};
use ztunnel::proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
    aggregated_discovery_service_server::AggregatedDiscoveryService,
};

use super::resources::{Pushed, Snapshot};

/// The ADS service.
pub struct Ads {
    snapshot: watch::Receiver<Arc<Snapshot>>,
    /// The bearer token clients must present, if any.
    token: Option<String>,
}

impl Ads {
    /// Serves `snapshot` (and its updates) to clients presenting `token`.
    pub fn new(snapshot: watch::Receiver<Arc<Snapshot>>, token: Option<String>) -> Self {
        Self { snapshot, token }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type DeltaAggregatedResourcesStream = ResponseStream;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        if let Some(token) = &self.token {
            let presented = request
                .metadata()
                .get("authorization")
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default();
            if presented != format!("Bearer {token}") {
                println!("REFUSED stream: authorization {presented:?}");
                return Err(Status::unauthenticated("bad or missing bearer token"));
            }
        }
        let cluster = request
            .metadata()
            .get("clusterid")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let (responses, outgoing) = mpsc::channel(16);
        let snapshot = self.snapshot.clone();
        tokio::spawn(serve_stream(
            request.into_inner(),
            snapshot,
            responses,
            cluster,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(outgoing))))
    }
}

/// What one stream has sent, per type: name → version.
type Sent = BTreeMap<String, BTreeMap<String, String>>;

async fn serve_stream(
    mut requests: Streaming<DeltaDiscoveryRequest>,
    mut snapshot: watch::Receiver<Arc<Snapshot>>,
    responses: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    cluster: String,
) {
    let mut sent: Sent = BTreeMap::new();
    let mut nonce = 0u64;
    loop {
        tokio::select! {
            request = requests.message() => {
                let request = match request {
                    Ok(Some(request)) => request,
                    Ok(None) => { println!("stream closed by the client"); return; }
                    Err(status) => { println!("stream error: {status}"); return; }
                };
                if let Some(node) = &request.node {
                    println!("SUBSCRIBE type={} node_id={} clusterid={cluster} metadata={:?} initial_versions={}", request.type_url, node.id, node.metadata.as_ref().map(|m| m.fields.keys().collect::<Vec<_>>()), request.initial_resource_versions.len());
                    sent.insert(request.type_url.clone(), request.initial_resource_versions.clone().into_iter().collect());
                    let current = snapshot.borrow().clone();
                    if let Some(response) = diff(&request.type_url, &current, &mut sent, &mut nonce, true)
                        && responses.send(Ok(response)).await.is_err() { return; }
                } else if let Some(error) = &request.error_detail {
                    println!("NACK type={} nonce={} error={}", request.type_url, request.response_nonce, error.message);
                } else {
                    println!("ACK type={} nonce={}", request.type_url, request.response_nonce);
                }
            }
            changed = snapshot.changed() => {
                if changed.is_err() { return; }
                let current = snapshot.borrow_and_update().clone();
                let types: Vec<String> = sent.keys().cloned().collect();
                for type_url in types {
                    if let Some(response) = diff(&type_url, &current, &mut sent, &mut nonce, false)
                        && responses.send(Ok(response)).await.is_err() { return; }
                }
            }
        }
    }
}

/// The response that brings a client holding `sent[type_url]` up to `current`; `None` when
/// nothing changed (unless `always`: a subscription is always answered).
fn diff(
    type_url: &str,
    current: &Snapshot,
    sent: &mut Sent,
    nonce: &mut u64,
    always: bool,
) -> Option<DeltaDiscoveryResponse> {
    let empty = BTreeMap::new();
    let resources = current.get(type_url).unwrap_or(&empty);
    let held = sent.entry(type_url.to_owned()).or_default();
    let changed: Vec<Resource> = resources
        .iter()
        .filter(|(name, pushed)| held.get(*name) != Some(&pushed.version))
        .map(|(name, pushed)| resource(type_url, name, pushed))
        .collect();
    let removed: Vec<String> = held
        .keys()
        .filter(|name| !resources.contains_key(*name))
        .cloned()
        .collect();
    if changed.is_empty() && removed.is_empty() && !always {
        return None;
    }
    *held = resources
        .iter()
        .map(|(name, pushed)| (name.clone(), pushed.version.clone()))
        .collect();
    *nonce += 1;
    println!(
        "PUSH type={type_url} nonce={nonce} resources={} removed={:?}",
        changed.len(),
        removed
    );
    Some(DeltaDiscoveryResponse {
        system_version_info: format!("v{nonce}"),
        resources: changed,
        type_url: type_url.to_owned(),
        removed_resources: removed,
        nonce: nonce.to_string(),
    })
}

fn resource(type_url: &str, name: &str, pushed: &Pushed) -> Resource {
    Resource {
        version: pushed.version.clone(),
        resource: Some(prost_types::Any {
            type_url: type_url.to_owned(),
            value: pushed.payload.clone(),
        }),
        name: name.to_owned(),
        ..Resource::default()
    }
}
