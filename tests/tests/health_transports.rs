//! Active health checks the way Envoy runs them: over the cluster's TLS
//! transport socket, over HTTP/2 for `codec_client_type: HTTP2`, as
//! `grpc.health.v1.Health/Check` for `grpc_health_check`, and to the
//! endpoint's `health_check_config.port_value`. Each host is marked
//! unhealthy and healthy again by what its checks answer. Run on
//! trellis-proxy and on stock Envoy, the reference.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use trellis_tests::process::{require_envoy, workspace_bin, ProxyProcess};
use trellis_tests::tls::{Ca, Issued, Leaf};
use trellis_tests::{eventually, within};

/// A host answering `GET /healthz` (200 or 503) and the gRPC health
/// service (SERVING or NOT_SERVING) by one switch; over TLS when given a
/// server config; HTTP/2 only when asked. Counts the checks it answered
/// and keeps the Host (or :authority) of the last one.
struct Checked {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    checks: Arc<AtomicU64>,
    last_host: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Checked {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn answer(healthy: bool, req: &Request<Incoming>) -> Response<Body> {
    if req.uri().path() == "/grpc.health.v1.Health/Check" {
        // HealthCheckResponse { status: SERVING (1) | NOT_SERVING (2) }.
        let status = if healthy { 1 } else { 2 };
        let frames = futures::stream::iter([
            Ok(Frame::data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]))),
            Ok(Frame::trailers({
                let mut t = http::HeaderMap::new();
                t.insert("grpc-status", http::HeaderValue::from_static("0"));
                t
            })),
        ]);
        return Response::builder()
            .header("content-type", "application/grpc")
            .body(BodyExt::boxed(StreamBody::new(frames)))
            .expect("grpc response");
    }
    let status = if healthy { 200 } else { 503 };
    Response::builder()
        .status(status)
        .body(BodyExt::boxed(Full::new(Bytes::from_static(b"hc"))))
        .expect("response")
}

impl Checked {
    async fn start(tls: Option<Arc<rustls::ServerConfig>>, h2_only: bool) -> Checked {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let healthy = Arc::new(AtomicBool::new(true));
        let checks = Arc::new(AtomicU64::new(0));
        let last_host = Arc::new(Mutex::new(String::new()));
        let (h, c, lh) = (healthy.clone(), checks.clone(), last_host.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (h, c, lh, tls) = (h.clone(), c.clone(), lh.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        c.fetch_add(1, Ordering::Relaxed);
                        let host = req
                            .uri()
                            .authority()
                            .map(|a| a.to_string())
                            .or_else(|| {
                                req.headers()
                                    .get(http::header::HOST)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_string)
                            })
                            .unwrap_or_default();
                        *lh.lock().unwrap_or_else(|p| p.into_inner()) = host;
                        let reply = answer(h.load(Ordering::Relaxed), &req);
                        async move { Ok::<_, std::convert::Infallible>(reply) }
                    });
                    let mut builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    if h2_only {
                        builder = builder.http2_only();
                    }
                    match tls {
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                        Some(cfg) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                            if let Ok(s) = acceptor.accept(tcp).await {
                                let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                    }
                });
            }
        });
        Checked {
            addr,
            healthy,
            checks,
            last_host,
            task,
        }
    }

    fn set_healthy(&self, ok: bool) {
        self.healthy.store(ok, Ordering::Relaxed);
    }

    fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    fn last_host(&self) -> String {
        self.last_host
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn server_config(leaf: &Issued) -> Arc<rustls::ServerConfig> {
    let chain = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key");
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server cert");
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// A bootstrap with one STATIC cluster `hc` on `host` (with the endpoint's
/// `health_check_config` fields when given); `extra` is cluster YAML at 4
/// spaces.
fn bootstrap(host: SocketAddr, hc_config: Option<&str>, extra: &str) -> String {
    let hc_config = hc_config.map_or(String::new(), |c| {
        format!("            health_check_config: {{ {c} }}\n")
    });
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  clusters:
  - name: hc
    type: STATIC
    connect_timeout: 1s
{extra}    load_assignment:
      cluster_name: hc
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{ socket_address: {{ address: {}, port_value: {} }} }}
{hc_config}"#,
        host.ip(),
        host.port()
    )
}

/// `checker` is the health checker's own YAML (at 6 spaces).
fn health_checks(checker: &str) -> String {
    format!(
        "    health_checks:\n    - timeout: 1s\n      interval: 0.1s\n      no_traffic_interval: 0.1s\n      unhealthy_threshold: 1\n      healthy_threshold: 1\n{checker}"
    )
}

async fn healthy(p: &ProxyProcess, n: i64, what: &str) {
    eventually(
        Duration::from_secs(10),
        &format!("{what}: {n} healthy"),
        || async { (p.stat("cluster.hc.membership_healthy").await == n).then_some(()) },
    )
    .await;
}

/// Healthy, unhealthy once `host` says so, healthy again; and the checks
/// reached `host`.
async fn flips(proxy: &Path, config: &str, host: &Checked, what: &str) {
    let p = ProxyProcess::start_with(proxy, config, &[]).await;
    healthy(&p, 1, what).await;
    assert!(host.checks() > 0, "{what}: the checks reached the host");
    host.set_healthy(false);
    healthy(&p, 0, what).await;
    host.set_healthy(true);
    healthy(&p, 1, what).await;
}

async fn scenario(proxy: PathBuf) {
    // Over the cluster's TLS: the host speaks nothing but TLS.
    let ca = Ca::new("hc-ca");
    let leaf = ca.issue(&Leaf::new(&["host.test"], &[]));
    let tls_host = Checked::start(Some(server_config(&leaf)), false).await;
    // A JSON string is a YAML string: no indentation to get right.
    let ca_pem = serde_json::to_string(&ca.pem).expect("CA as a string");
    let transport = format!(
        r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: host.test
        common_tls_context:
          validation_context:
            trusted_ca: {{ inline_string: {ca_pem} }}
"#
    );
    let checks = health_checks("      http_health_check: { path: /healthz }\n");
    let config = bootstrap(tls_host.addr, None, &format!("{checks}{transport}"));
    flips(&proxy, &config, &tls_host, "HTTP check over TLS").await;

    // HTTP/2 codec: the host refuses HTTP/1.1.
    let h2_host = Checked::start(None, true).await;
    let checks =
        health_checks("      http_health_check: { path: /healthz, codec_client_type: HTTP2 }\n");
    let config = bootstrap(h2_host.addr, None, &checks);
    flips(&proxy, &config, &h2_host, "HTTP/2 check").await;

    // gRPC health checking protocol, also over TLS.
    let grpc_host = Checked::start(Some(server_config(&leaf)), true).await;
    let checks = health_checks("      grpc_health_check: {}\n");
    let http2 = r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
"#;
    let config = bootstrap(grpc_host.addr, None, &format!("{checks}{transport}{http2}"));
    flips(&proxy, &config, &grpc_host, "gRPC check over TLS").await;

    // The endpoint's health check port: traffic port always healthy, the
    // check port decides.
    let traffic = Checked::start(None, false).await;
    let check_port = Checked::start(None, false).await;
    let checks = health_checks("      http_health_check: { path: /healthz }\n");
    let port = format!("port_value: {}", check_port.addr.port());
    let config = bootstrap(traffic.addr, Some(&port), &checks);
    flips(
        &proxy,
        &config,
        &check_port,
        "check on health_check_config.port_value",
    )
    .await;
    assert_eq!(traffic.checks(), 0, "no check went to the traffic port");

    // The Host of checks: the cluster's `host`, unless the endpoint's
    // `health_check_config.hostname` says otherwise.
    let named = Checked::start(None, false).await;
    let checks = health_checks("      http_health_check: { path: /healthz, host: cluster.test }\n");
    let config = bootstrap(named.addr, None, &checks);
    flips(
        &proxy,
        &config,
        &named,
        "HTTP check with the cluster's host",
    )
    .await;
    assert_eq!(named.last_host(), "cluster.test");
    let config = bootstrap(named.addr, Some("hostname: endpoint.test"), &checks);
    flips(
        &proxy,
        &config,
        &named,
        "HTTP check with the endpoint's hostname",
    )
    .await;
    assert_eq!(named.last_host(), "endpoint.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_over_tls_h2_grpc_and_their_own_port_on_trellis() {
    within(
        Duration::from_secs(90),
        "health check transports on trellis-proxy",
        scenario(workspace_bin("trellis-proxy")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_over_tls_h2_grpc_and_their_own_port_on_envoy() {
    within(
        Duration::from_secs(90),
        "health check transports on Envoy",
        scenario(require_envoy()),
    )
    .await;
}
