//! A test Istio CA: `istio.v1.auth.IstioCertificateService/CreateCertificate` over TLS (a
//! serving certificate for its IP, from the mesh root), signing CSRs with a test intermediate
//! as istiod does, answering leaf, intermediate and root. It records every request (the
//! impersonated identity, the bearer token, the cluster id), can be told to fail, and can be
//! stopped (listener and open connections closed) and restarted on the same address.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    service::TowerToHyperService,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_rustls::TlsAcceptor;
use ztunnel::{
    identity::{CertificateAuthority, SpiffeId, ca_client::IMPERSONATED_IDENTITY},
    proto::istio::v1::auth::{
        IstioCertificateRequest, IstioCertificateResponse,
        istio_certificate_service_server::{
            IstioCertificateService, IstioCertificateServiceServer,
        },
    },
};

/// One `CreateCertificate` call as the CA saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The `ImpersonatedIdentity` metadata.
    pub impersonated: Option<String>,
    /// The `authorization` header.
    pub authorization: Option<String>,
    /// The `clusterid` header.
    pub cluster_id: Option<String>,
    /// The lifetime asked for, in seconds.
    pub validity_seconds: i64,
    /// `Ok(())` if a certificate was issued, else the status message.
    pub outcome: Result<(), String>,
}

struct Shared {
    signer: CertificateAuthority,
    lifetime: Mutex<Duration>,
    failing: AtomicBool,
    requests: Mutex<Vec<RecordedRequest>>,
}

/// The CA service; stopped on drop.
pub struct TestCaService {
    address: SocketAddr,
    root: Arc<CertificateAuthority>,
    shared: Arc<Shared>,
    serving: Option<tokio::task::JoinHandle<()>>,
}

impl TestCaService {
    /// Serves on `address` (port 0 picks one), signing with a new intermediate of `root`
    /// certificates that live `lifetime` (whatever the client asks for).
    pub async fn start(
        address: SocketAddr,
        root: Arc<CertificateAuthority>,
        lifetime: Duration,
    ) -> anyhow::Result<Self> {
        let signer = root.intermediate("test-istio-ca")?;
        let mut service = Self {
            address,
            root,
            shared: Arc::new(Shared {
                signer,
                lifetime: Mutex::new(lifetime),
                failing: AtomicBool::new(false),
                requests: Mutex::default(),
            }),
            serving: None,
        };
        service.restart().await?;
        Ok(service)
    }

    /// Where it listens (`host:port` for `--ca-address`).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The mesh root (PEM), for `--ca-root-cert`.
    pub fn root_pem(&self) -> &str {
        self.root.root_pem()
    }

    /// Answers every call with `UNAVAILABLE` while `failing`.
    pub fn set_failing(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::SeqCst);
    }

    /// Every call so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Closes the listener and every open connection: the CA is gone.
    pub async fn stop(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.abort();
            let _ = serving.await;
        }
    }

    /// Serves again on the same address (after [`stop`](Self::stop), or the first time).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        let listener = TcpListener::bind(self.address)
            .await
            .with_context(|| format!("cannot bind the test CA on {}", self.address))?;
        self.address = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(serving_config(&self.root, self.address)?);
        let service = IstioCertificateServiceServer::new(Signer(self.shared.clone()));
        println!("test Istio CA serving on {}", self.address);
        self.serving = Some(tokio::spawn(serve(listener, acceptor, service)));
        Ok(())
    }
}

impl Drop for TestCaService {
    fn drop(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.abort();
        }
    }
}

/// A [`TestCaService`] on its own thread inside a network namespace (a cluster's underlay,
/// where every node reaches it), until dropped.
pub struct NetnsCaService {
    address: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NetnsCaService {
    /// Starts the CA inside the netns named `netns` (under /var/run/netns) on `address`.
    pub fn start(
        netns: &str,
        address: SocketAddr,
        root: Arc<CertificateAuthority>,
        lifetime: Duration,
    ) -> anyhow::Result<Self> {
        let path = format!("/var/run/netns/{netns}");
        let namespace =
            std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
        let (ready, started) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let run = || -> anyhow::Result<tokio::runtime::Runtime> {
                // Only this thread enters the netns; its sockets stay there.
                nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                    .context("cannot enter the CA's netns")?;
                Ok(tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?)
            };
            let runtime = match run() {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready.send(Err(error));
                    return;
                }
            };
            runtime.block_on(async move {
                match TestCaService::start(address, root, lifetime).await {
                    Ok(service) => {
                        let _ = ready.send(Ok((service.address, service.shared.clone())));
                        let _ = stopped.await;
                        drop(service);
                    }
                    Err(error) => {
                        let _ = ready.send(Err(error));
                    }
                }
            });
        });
        let (address, shared) = started
            .recv_timeout(Duration::from_secs(10))
            .context("the CA thread did not start")??;
        Ok(Self {
            address,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Every call so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Answers every call with `UNAVAILABLE` while `failing`.
    pub fn set_failing(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::SeqCst);
    }
}

impl Drop for NetnsCaService {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts connections until aborted; aborting drops the open connections too.
async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    service: IstioCertificateServiceServer<Signer>,
) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, service) = (acceptor.clone(), service.clone());
        connections.spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(service))
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

/// TLS 1.3 with ALPN h2 and a certificate for `address`'s IP, issued by the mesh root.
fn serving_config(
    root: &CertificateAuthority,
    address: SocketAddr,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let key = rcgen::KeyPair::generate()?;
    let issuer_key = rcgen::KeyPair::from_pem(&root.signing_key_pem())?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(root.signing_cert_pem(), issuer_key)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![rcgen::SanType::IpAddress(address.ip())];
    let certificate = params.signed_by(&key, &issuer)?;
    let chain = vec![CertificateDer::from(certificate.der().to_vec())];
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())?;
    let mut config =
        rustls::ServerConfig::builder_with_provider(ztunnel::identity::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

struct Signer(Arc<Shared>);

#[tonic::async_trait]
impl IstioCertificateService for Signer {
    async fn create_certificate(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status> {
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let (authorization, cluster_id) = (header("authorization"), header("clusterid"));
        let body = request.get_ref();
        let impersonated = body
            .metadata
            .as_ref()
            .and_then(|metadata| metadata.fields.get(IMPERSONATED_IDENTITY))
            .and_then(|value| match &value.kind {
                Some(prost_types::value::Kind::StringValue(text)) => Some(text.clone()),
                _ => None,
            });
        let outcome = self.sign(body, impersonated.as_deref());
        self.0
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(RecordedRequest {
                impersonated,
                authorization,
                cluster_id,
                validity_seconds: body.validity_duration,
                outcome: outcome
                    .as_ref()
                    .map(|_| ())
                    .map_err(|status| status.message().to_owned()),
            });
        outcome.map(|cert_chain| tonic::Response::new(IstioCertificateResponse { cert_chain }))
    }
}

impl Signer {
    fn sign(
        &self,
        request: &IstioCertificateRequest,
        impersonated: Option<&str>,
    ) -> Result<Vec<String>, tonic::Status> {
        if self.0.failing.load(Ordering::SeqCst) {
            return Err(tonic::Status::unavailable(
                "the test CA is failing on purpose",
            ));
        }
        let identity: SpiffeId = impersonated
            .ok_or_else(|| tonic::Status::invalid_argument("no ImpersonatedIdentity"))?
            .parse()
            .map_err(|error| tonic::Status::invalid_argument(format!("{error}")))?;
        let lifetime = *self
            .0
            .lifetime
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.0
            .signer
            .sign_request(&request.csr, &identity, lifetime)
            .map_err(|error| tonic::Status::invalid_argument(error.to_string()))
    }
}
