//! Shared pieces of the resilience tests: upstreams that can be killed,
//! slowed or marked unhealthy at run time, a keep-alive load client, and a
//! bootstrap builder with HTTP filters.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// An HTTP/1.1 upstream. `/healthz` answers 200 or 503 by [`Up::set_healthy`]
/// (or any status, by [`Up::set_health_status`]);
/// `/fail` (or anything, after [`Up::set_failing`]) answers 503 at once;
/// anything else 200 with the name in `x-upstream`,
/// after the delay set by [`Up::set_delay`]. [`Up::kill`] closes the
/// listener and every open connection, like a crashed process.
pub struct Up {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicU64>,
    healthy: Arc<AtomicU16>,
    failing: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Drop for Up {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Up {
    pub async fn start(name: &str) -> Up {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicU64::new(0));
        let healthy = Arc::new(AtomicU16::new(200));
        let failing = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (h, ok, f, d, t, n) = (
            hits.clone(),
            healthy.clone(),
            failing.clone(),
            delay_ms.clone(),
            tasks.clone(),
            Arc::<str>::from(name),
        );
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (h, ok, f, d, n) = (h.clone(), ok.clone(), f.clone(), d.clone(), n.clone());
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (h, ok, f, d, n) =
                            (h.clone(), ok.clone(), f.clone(), d.clone(), n.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(serve(req, &h, &ok, &f, &d, &n).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                if let Ok(mut t) = t.lock() {
                    t.retain(|a| !a.is_finished());
                    t.push(conn.abort_handle());
                }
            }
        });
        if let Ok(mut t) = tasks.lock() {
            t.push(accept.abort_handle());
        }
        Up {
            addr,
            name: name.to_string(),
            hits,
            healthy,
            failing,
            delay_ms,
            tasks,
        }
    }

    pub fn set_healthy(&self, ok: bool) {
        self.set_health_status(if ok { 200 } else { 503 });
    }

    /// The status `/healthz` answers with; 0: no answer at all.
    pub fn set_health_status(&self, status: u16) {
        self.healthy.store(status, Ordering::Relaxed);
    }

    pub fn set_failing(&self, fail: bool) {
        self.failing.store(fail, Ordering::Relaxed);
    }

    pub fn set_delay(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::Relaxed);
    }

    pub fn kill(&self) {
        if let Ok(mut t) = self.tasks.lock() {
            for a in t.drain(..) {
                a.abort();
            }
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

async fn serve(
    req: Request<Incoming>,
    hits: &AtomicU64,
    healthy: &AtomicU16,
    failing: &AtomicBool,
    delay_ms: &AtomicU64,
    name: &str,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let mut resp = Response::new(Full::new(Bytes::from(name.to_string())));
    resp.headers_mut()
        .insert("x-upstream", name.parse().expect("name is a header value"));
    if let Some(n) = req.headers().get("x-envoy-attempt-count") {
        resp.headers_mut().insert("x-seen-attempt-count", n.clone());
    }
    if path == "/healthz" {
        let status = healthy.load(Ordering::Relaxed);
        if status == 0 {
            // No answer: the check times out, a network failure.
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        *resp.status_mut() = http::StatusCode::from_u16(status.max(100)).expect("a status code");
        return resp;
    }
    hits.fetch_add(1, Ordering::Relaxed);
    if failing.load(Ordering::Relaxed) {
        *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        return resp;
    }
    let d = delay_ms.load(Ordering::Relaxed);
    if d > 0 {
        tokio::time::sleep(Duration::from_millis(d)).await;
    }
    if path.starts_with("/fail") {
        *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    }
    resp
}

/// One reply as the load client saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub status: u16,
    pub upstream: Option<String>,
    pub latency: Duration,
    pub headers: http::HeaderMap,
}

/// A keep-alive HTTP/1.1 client (pooled connections, as real callers use).
pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(
    c: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: &str,
    headers: &[(&str, &str)],
) -> Seen {
    let started = Instant::now();
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::new())).expect("request");
    match c.request(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let upstream = headers
                .get("x-upstream")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let _ = resp.into_body().collect().await;
            Seen {
                status,
                upstream,
                latency: started.elapsed(),
                headers,
            }
        }
        Err(_) => Seen {
            status: 0,
            upstream: None,
            latency: started.elapsed(),
            headers: http::HeaderMap::new(),
        },
    }
}

/// A STATIC cluster over `ups`; `extra` is cluster YAML at 4 spaces.
pub fn cluster(name: &str, ups: &[&Up], extra: &str) -> String {
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    trellis_tests::config::cluster(name, &addrs, extra)
}

/// A bootstrap with one listener on `port`, `vhosts` (YAML list items at 10
/// spaces, as for `trellis_tests::config::http_proxy`) and `filters` (HTTP
/// filter list items at 10 spaces) before the router.
pub fn bootstrap(port: u16, vhosts: &str, clusters: &[String], filters: &str) -> String {
    let base = trellis_tests::config::http_proxy(port, vhosts, clusters, "");
    let router = "          http_filters:\n";
    base.replacen(router, &format!("{router}{filters}"), 1)
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// [`bootstrap`] plus an access log of `%RESPONSE_CODE% %RESPONSE_FLAGS%`
/// lines to `log`.
pub fn bootstrap_logged(
    port: u16,
    vhosts: &str,
    clusters: &[String],
    filters: &str,
    log: &std::path::Path,
) -> String {
    let access_log = trellis_tests::config::indent(
        &format!(
            r#"access_log:
- name: envoy.access_loggers.file
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: {}
    log_format:
      text_format_source:
        inline_string: "%RESPONSE_CODE% %RESPONSE_FLAGS%\n"
"#,
            log.display()
        ),
        10,
    );
    let base = trellis_tests::config::http_proxy(port, vhosts, clusters, &access_log);
    let router = "          http_filters:\n";
    base.replacen(router, &format!("{router}{filters}"), 1)
}

/// The access log's lines once it holds `n`.
pub async fn log_lines(log: &std::path::Path, n: usize) -> Vec<String> {
    trellis_tests::eventually(Duration::from_secs(10), "access log lines", || async {
        let text = std::fs::read_to_string(log).ok()?;
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        (lines.len() >= n).then_some(lines)
    })
    .await
}
