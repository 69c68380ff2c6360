//! The injector's HTTPS edge: rustls, HTTP/1.1, `POST /mutate-v1-pod` for
//! namespaces that inject by default and `POST /mutate-v1-pod/opt-in` for
//! namespaces where only annotated pods are injected. Each request reads the
//! mesh from the store (admission is rare next to proxy traffic, and the
//! answer must see the latest apply) and hands it to [`super::admit`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::mesh::MeshView;
use super::review::{admit, NamespaceDefault};
use super::settings::Settings;
use crate::served_cert::{ServedCert, RELOAD_EVERY};
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

/// The injector's TLS config: its certificate, ALPN `http/1.1`.
fn server_config(cert: &Arc<ServedCert>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(cert.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
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
    cert: Arc<ServedCert>,
    webhook: Arc<Webhook>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let tls = server_config(&cert).map_err(std::io::Error::other)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let mut reload = tokio::time::interval(RELOAD_EVERY);
    reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = reload.tick(), if cert.watched() => cert.reload().await,
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
