//! HTTP clients for tests: HTTP/1.1 and HTTP/2 (prior knowledge), plus raw TCP.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The echo upstream's JSON description of the request it received.
    pub fn echoed(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not echo JSON ({e}): {}", self.body_text()))
    }
}

pub async fn get(url: &str) -> anyhow::Result<Reply> {
    request(Method::GET, url, &[], "").await
}

pub async fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<Reply> {
    send(
        false,
        method,
        url,
        headers,
        Bytes::copy_from_slice(body.as_bytes()),
    )
    .await
}

pub async fn request_h2(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<Reply> {
    send(
        true,
        method,
        url,
        headers,
        Bytes::copy_from_slice(body.as_bytes()),
    )
    .await
}

/// Like [`request_h2`] with a binary body (gRPC frames).
pub async fn request_h2_bytes(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> anyhow::Result<Reply> {
    send(true, method, url, headers, body).await
}

async fn send(
    h2: bool,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> anyhow::Result<Reply> {
    let mut builder = Client::builder(TokioExecutor::new());
    builder.http2_only(h2).pool_max_idle_per_host(0);
    let client: Client<_, Full<Bytes>> = builder.build_http();
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req)).await??;
    let (parts, body) = resp.into_parts();
    let collected = tokio::time::timeout(Duration::from_secs(30), body.collect()).await??;
    let trailers = collected.trailers().cloned();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// Writes raw bytes and reads until the peer closes or `timeout` passes.
pub async fn raw(addr: std::net::SocketAddr, bytes: &[u8], timeout: Duration) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
