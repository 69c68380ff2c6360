//! The admin API, on Envoy's paths with Envoy's meanings.

mod config_dump;
mod pages;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::body::{self, Body};
use crate::shared::{ServerState, Shared};

/// Changes the log level at run time (`POST /logging?level=debug`).
pub type SetLogLevel = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

pub struct Admin {
    pub shared: Arc<Shared>,
    pub set_log_level: SetLogLevel,
}

impl Admin {
    pub fn spawn(self: Arc<Self>, listener: TcpListener) {
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let admin = self.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let admin = admin.clone();
                        async move { Ok::<_, Infallible>(admin.handle(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let s = &self.shared;
        let post = req.method() == Method::POST;
        match (path.as_str(), post) {
            ("/ready", _) => {
                let state = s.state();
                let status = if state == ServerState::Live {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                text(status, &format!("{}\n", state.name()))
            }
            ("/stats", _) => pages::stats(s, &query),
            ("/stats/prometheus", _) => pages::prometheus(s),
            ("/reopen_logs", true) => {
                crate::access_log::reopen_all();
                text(StatusCode::OK, "OK\n")
            }
            ("/config_dump", _) => json(config_dump::render(s)),
            ("/clusters", _) => pages::clusters(s, &query),
            ("/listeners", _) => pages::listeners(s, &query),
            ("/server_info", _) => json(pages::server_info(s)),
            ("/healthcheck/fail", true) => {
                s.health_failed.store(true, Ordering::Relaxed);
                text(StatusCode::OK, "OK\n")
            }
            ("/healthcheck/ok", true) => {
                s.health_failed.store(false, Ordering::Relaxed);
                text(StatusCode::OK, "OK\n")
            }
            ("/drain_listeners", true) => {
                s.drain.start();
                text(StatusCode::OK, "OK\n")
            }
            ("/quitquitquit", true) => {
                s.shutdown.notify_one();
                text(StatusCode::OK, "OK\n")
            }
            ("/logging", true) => {
                let level = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("level="))
                    .unwrap_or("");
                match (self.set_log_level)(level) {
                    Ok(()) => text(StatusCode::OK, &format!("active loggers: level {level}\n")),
                    Err(e) => text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
                }
            }
            (
                "/healthcheck/fail" | "/healthcheck/ok" | "/drain_listeners" | "/quitquitquit"
                | "/logging",
                false,
            ) => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "This endpoint requires POST\n",
            ),
            ("/", _) | ("/help", _) => text(StatusCode::OK, HELP),
            _ => text(
                StatusCode::NOT_FOUND,
                &format!("invalid path: {path}\n{HELP}"),
            ),
        }
    }
}

const HELP: &str = "admin commands are:
  /clusters: upstream cluster status
  /config_dump: dump current configuration
  /drain_listeners (POST): drain listeners
  /healthcheck/fail (POST): cause the server to fail health checks
  /healthcheck/ok (POST): cause the server to pass health checks
  /listeners: print listener info
  /logging (POST): change the log level, ?level=trace|debug|info|warn|error|off
  /quitquitquit (POST): exit the server
  /ready: print server state, return 200 if LIVE, otherwise 503
  /server_info: print server version/status information
  /stats: print server stats, ?filter=REGEX, ?format=json
  /stats/prometheus: print server stats in prometheus format
  /reopen_logs (POST): reopen access log files, as after log rotation
";

pub fn text(status: StatusCode, body_text: &str) -> Response<Body> {
    let mut r = Response::new(body::full(body_text.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    r
}

fn json(v: serde_json::Value) -> Response<Body> {
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    let mut r = Response::new(body::full(s));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Binds the admin address; port 0 picks a free port, reported back.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
