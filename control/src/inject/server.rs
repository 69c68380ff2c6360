//! The injector's HTTPS edge: rustls, HTTP/1.1, `POST /mutate-v1-pod` for
//! namespaces that inject by default and `POST /mutate-v1-pod/opt-in` for
//! namespaces where only annotated pods are injected. Each request reads the
//! mesh from the store (admission is rare next to proxy traffic, and the
//! answer must see the latest apply) and hands it to [`super::admit`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;

use super::mesh::MeshView;
use super::review::{admit, NamespaceDefault};
use super::settings::Settings;
use crate::store::Store;

/// The paths served, and the namespace default each stands for; the
/// webhook configuration (`deploy/injector.yaml`) sends each namespace
/// label value to its own.
pub const PATHS: [(&str, NamespaceDefault); 2] = [
    ("/mutate-v1-pod", NamespaceDefault::Enabled),
    ("/mutate-v1-pod/opt-in", NamespaceDefault::Disabled),
];

/// A pod and its old copy fit well inside; Kubernetes objects are at most
/// about 1.5 MB.
const MAX_BODY: usize = 4 << 20;
/// A client that does not finish its handshake in this long is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{0}: the certificate and the key do not belong together or cannot be used: {1}")]
    Pair(String, rustls::Error),
}

/// How often the certificate files are read again for a rotation
/// (cert-manager renewing the Secret, the kubelet swapping the files).
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// A chain and key, PEM, checked to belong together. `origin` names the
/// files in errors.
fn certified_key(
    chain_pem: &[u8],
    key_pem: &[u8],
    origin: (&str, &str),
) -> Result<Arc<CertifiedKey>, TlsError> {
    let bad = |path: &str, message: String| TlsError::File {
        path: path.to_string(),
        message,
    };
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(origin.0, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(bad(origin.0, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| bad(origin.1, format!("not a PEM private key: {e}")))?;
    CertifiedKey::from_der(chain, key, &provider())
        .map(Arc::new)
        .map_err(|e| TlsError::Pair(format!("{} and {}", origin.0, origin.1), e))
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The certificate the injector serves: issued once by the mesh CA, or the
/// operator's files, read again every second so that a rotated pair is
/// served from the next handshake on, without a restart.
#[derive(Debug)]
pub struct WebhookCert {
    current: RwLock<Arc<CertifiedKey>>,
    files: Option<Files>,
}

#[derive(Debug)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    /// The contents `current` was made from.
    loaded: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl WebhookCert {
    /// A fixed certificate (the one the mesh CA issued).
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<WebhookCert, TlsError> {
        Ok(WebhookCert {
            current: RwLock::new(certified_key(
                chain_pem,
                key_pem,
                ("issued certificate", "issued key"),
            )?),
            files: None,
        })
    }

    /// `--webhook-cert` and `--webhook-key`, watched for rotation.
    pub fn from_files(cert: &Path, key: &Path) -> Result<WebhookCert, TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| TlsError::File {
                path: p.display().to_string(),
                message: e.to_string(),
            })
        };
        let (c, k) = (read(cert)?, read(key)?);
        let current = certified_key(
            &c,
            &k,
            (&cert.display().to_string(), &key.display().to_string()),
        )?;
        Ok(WebhookCert {
            current: RwLock::new(current),
            files: Some(Files {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                loaded: Mutex::new((c, k)),
            }),
        })
    }

    fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Serves the files' pair if they changed and are good; a bad pair is
    /// logged and the last good one kept (a half-written rotation is
    /// picked up on a later read).
    async fn reload(&self) {
        let Some(files) = &self.files else { return };
        let (Ok(c), Ok(k)) = (
            tokio::fs::read(&files.cert).await,
            tokio::fs::read(&files.key).await,
        ) else {
            return;
        };
        let mut loaded = files.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.0 == c && loaded.1 == k {
            return;
        }
        let origin = (
            files.cert.display().to_string(),
            files.key.display().to_string(),
        );
        match certified_key(&c, &k, (&origin.0, &origin.1)) {
            Ok(pair) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = pair;
                *loaded = (c, k);
                tracing::info!(cert = %origin.0, "the injector serves a new certificate");
            }
            Err(e) => {
                *loaded = (c, k);
                tracing::warn!(error = %e, "kept the injector's last good certificate");
            }
        }
    }
}

impl ResolvesServerCert for WebhookCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

pub struct Webhook {
    store: Arc<Store>,
    settings: Settings,
}

impl Webhook {
    pub fn new(store: Arc<Store>, settings: Settings) -> Webhook {
        Webhook { store, settings }
    }
}

/// Serves until `shutdown` resolves, then lets in-flight reviews finish.
pub async fn serve(
    listener: TcpListener,
    cert: Arc<WebhookCert>,
    webhook: Arc<Webhook>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let tls = cert.server_config().map_err(std::io::Error::other)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let mut reload = tokio::time::interval(RELOAD_EVERY);
    reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = reload.tick(), if cert.files.is_some() => cert.reload().await,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook accept failed");
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let webhook = webhook.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "webhook TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%peer, "webhook TLS handshake timed out");
                            return;
                        }
                    };
                    let service = service_fn(move |req| {
                        let webhook = webhook.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(&webhook, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service);
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "webhook connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

fn plain(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    reply(
        status,
        "text/plain; charset=utf-8",
        format!("{message}\n").into_bytes(),
    )
}

async fn handle(webhook: &Webhook, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let Some(&(_, namespace_default)) = PATHS.iter().find(|(p, _)| *p == path) else {
        return plain(
            StatusCode::NOT_FOUND,
            format!("no such path {path}; the injector serves POST /mutate-v1-pod and /mutate-v1-pod/opt-in"),
        );
    };
    if req.method() != Method::POST {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} takes POST with an AdmissionReview", req.uri().path()),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the AdmissionReview is larger than {MAX_BODY} bytes or was cut off"),
            )
        }
    };
    let store = webhook.store.clone();
    let mesh = tokio::task::spawn_blocking(move || store.read(|tx| MeshView::read(tx))).await;
    let mesh = match mesh {
        Ok(Ok(mesh)) => Ok(mesh),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = &mesh {
        tracing::error!(error = %e, "the injector cannot read the mesh");
    }
    let admission = admit(
        &body,
        mesh.as_ref().map_err(String::as_str),
        &webhook.settings,
        namespace_default,
    );
    match &admission.injected {
        Some(node) => tracing::info!(pod = %admission.pod, node = %node, "injected a sidecar"),
        None if !admission.warnings.is_empty() => {
            tracing::warn!(pod = %admission.pod, warnings = ?admission.warnings, "pod left as it is")
        }
        None => tracing::debug!(pod = %admission.pod, "pod not injected"),
    }
    reply(
        StatusCode::OK,
        "application/json",
        admission.review.to_string().into_bytes(),
    )
}
