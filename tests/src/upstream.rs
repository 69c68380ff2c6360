//! Upstream servers for tests: an HTTP echo (HTTP/1.1 and HTTP/2) that
//! describes what it received, and a TCP echo.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An HTTP server that answers every request with JSON describing it:
/// `{"upstream", "method", "path", "version", "headers", "body_len"}`.
/// Paths steer it: `/status/N` answers N, `/delay/MS` waits first,
/// `/close` drops the connection without answering; a request header
/// `x-respond-NAME: V` adds `NAME: V` to the response.
pub struct Echo {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Echo {
    pub async fn start(name: &str) -> Echo {
        Self::start_on(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(name: &str, addr: SocketAddr) -> Echo {
        let listener = TcpListener::bind(addr).await.expect("bind echo upstream");
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(AtomicU64::new(0));
        let name: Arc<str> = Arc::from(name);
        let count = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let name = name.clone();
                let count = count.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        count.fetch_add(1, Ordering::Relaxed);
                        echo(name.clone(), req)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Echo {
            addr,
            requests,
            task,
        }
    }

    pub fn count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

type EchoBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> EchoBody {
    BodyExt::boxed(Full::new(b.into()).map_err(|e| match e {}))
}

async fn echo(
    name: Arc<str>,
    req: Request<Incoming>,
) -> Result<Response<EchoBody>, std::io::Error> {
    let path = req.uri().path().to_string();
    if req.headers().contains_key(http::header::UPGRADE) {
        return Ok(upgrade_echo(req).map(|b| BodyExt::boxed(b.map_err(|e| match e {}))));
    }
    if path == "/stall" {
        // One chunk, then silence: for stream idle timeouts.
        let frames = futures::stream::once(async {
            Ok(hyper::body::Frame::data(Bytes::from_static(b"first")))
        })
        .chain(futures::stream::pending());
        return Ok(Response::new(BodyExt::boxed(
            http_body_util::StreamBody::new(frames),
        )));
    }
    if let Some(ms) = path
        .strip_prefix("/delay/")
        .and_then(|s| s.split('/').next()?.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if path == "/discard" {
        return Ok(discard(req)
            .await
            .map(|b| BodyExt::boxed(b.map_err(|e| match e {}))));
    }
    if path == "/close" {
        return Err(std::io::Error::other("closing without a response"));
    }
    let status = path
        .strip_prefix("/status/")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let respond_with: Vec<(http::HeaderName, http::HeaderValue)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| {
            let name = k.as_str().strip_prefix("x-respond-")?;
            Some((
                http::HeaderName::from_bytes(name.as_bytes()).ok()?,
                v.clone(),
            ))
        })
        .collect();
    let method = req.method().to_string();
    let version = format!("{:?}", req.version());
    let uri = req.uri().to_string();
    // Repeated header lines are joined with ", " so none is lost (a map
    // would keep only the last): tests can see what a proxy appended.
    let mut headers = serde_json::Map::new();
    for name in req.headers().keys() {
        let joined: Vec<String> = req
            .headers()
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        headers.insert(
            name.to_string(),
            serde_json::Value::String(joined.join(", ")),
        );
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let json = serde_json::json!({
        "upstream": name.as_ref(),
        "method": method,
        "path": uri,
        "version": version,
        "headers": headers,
        "body_len": body.len(),
    });
    let mut resp = Response::new(full(json.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        "x-upstream",
        http::HeaderValue::from_str(&name).unwrap_or(http::HeaderValue::from_static("?")),
    );
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    // `x-respond-NAME: V` asks for `NAME: V` on the response, so tests can
    // have the upstream send headers that a proxy should remove or keep.
    for (name, value) in &respond_with {
        resp.headers_mut().append(name.clone(), value.clone());
    }
    Ok(resp)
}

/// Reads the body frame by frame without keeping it, and reports its length.
async fn discard(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let mut body = req.into_body();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => total += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    Response::new(Full::new(Bytes::from(total.to_string())))
}

/// Accepts a WebSocket-style upgrade and echoes raw bytes on the upgraded stream.
fn upgrade_echo(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(up) = on_upgrade.await else { return };
        let mut io = TokioIo::new(up);
        let mut buf = [0u8; 4096];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    resp
}

/// Echoes bytes back on every connection.
pub struct TcpEcho {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpEcho {
    pub async fn start() -> TcpEcho {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind tcp echo");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        TcpEcho { addr, task }
    }
}

/// Answers nothing: accepts and holds connections (for timeout tests).
pub async fn blackhole() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}
