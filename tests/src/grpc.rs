//! A gRPC echo upstream (tonic, h2c on loopback) and a raw gRPC client for
//! looking at what a proxy's local replies really are on the wire.
//!
//! The service is ours rather than e.g. the health service so that every RPC
//! shape (unary, server-, client- and bidi-streaming) and error trailers can
//! be driven from the request.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures::{Stream, StreamExt};
use http::Method;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::client::{self, Reply};

/// Code generated from `proto/echo.proto`.
pub mod pb {
    tonic::include_proto!("trellis.test.echo");
}

use pb::echo_server::{Echo, EchoServer};
use pb::{EchoRequest, EchoResponse};

/// Trailer metadata the server attaches to every failed call, so tests can
/// check that custom trailers survive the proxy next to `grpc-status`.
pub const FAIL_TRAILER: &str = "x-echo-failure";

/// The tonic echo service, served with prior-knowledge HTTP/2 (h2c).
pub struct GrpcEcho {
    pub addr: SocketAddr,
    /// Calls started, of any shape.
    pub calls: Arc<AtomicU64>,
    /// Calls whose response stream or handler was dropped before finishing:
    /// how a test sees that a proxy cancelled the upstream stream.
    pub cancelled: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcEcho {
    pub async fn start(name: &str) -> GrpcEcho {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind grpc echo upstream");
        let addr = listener.local_addr().expect("grpc echo local addr");
        let calls = Arc::new(AtomicU64::new(0));
        let cancelled = Arc::new(AtomicU64::new(0));
        let svc = EchoService {
            name: Arc::from(name),
            calls: calls.clone(),
            cancelled: cancelled.clone(),
        };
        // Served with hyper directly rather than tonic's `Server`, whose
        // stack enforces `grpc-timeout` itself: these upstreams deliberately
        // ignore deadlines, so only the proxy can enforce one.
        let service = hyper_util::service::TowerToHyperService::new(EchoServer::new(svc));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let service = service.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        GrpcEcho {
            addr,
            calls,
            cancelled,
            task,
        }
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    pub fn cancelled(&self) -> u64 {
        self.cancelled.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct EchoService {
    name: Arc<str>,
    calls: Arc<AtomicU64>,
    cancelled: Arc<AtomicU64>,
}

/// Counts a call as cancelled unless it is disarmed on the way out.
struct CancelGuard {
    counter: Arc<AtomicU64>,
    armed: bool,
}

impl CancelGuard {
    fn new(counter: &Arc<AtomicU64>) -> Self {
        CancelGuard {
            counter: counter.clone(),
            armed: true,
        }
    }
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            self.counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The failure a request asks for, with a custom trailer next to it.
fn requested_failure(req: &EchoRequest) -> Option<Status> {
    if req.fail_code == 0 {
        return None;
    }
    let mut status = Status::new(Code::from(req.fail_code), req.message.clone());
    status.metadata_mut().insert(
        FAIL_TRAILER,
        tonic::metadata::MetadataValue::from_static("trailer-value"),
    );
    Some(status)
}

fn metadata_lines(md: &tonic::metadata::MetadataMap) -> Vec<String> {
    let mut lines: Vec<String> = md
        .clone()
        .into_headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    lines.sort();
    lines
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<EchoResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let guard = CancelGuard::new(&self.cancelled);
        let metadata = metadata_lines(request.metadata());
        let req = request.into_inner();
        if req.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(req.delay_ms.into())).await;
        }
        guard.disarm();
        if let Some(status) = requested_failure(&req) {
            return Err(status);
        }
        let mut resp = Response::new(EchoResponse {
            message: req.message,
            index: 0,
            metadata,
        });
        resp.metadata_mut().insert(
            "x-upstream",
            self.name.parse().expect("upstream name is ASCII"),
        );
        Ok(resp)
    }

    type ServerStreamStream = ResponseStream;

    /// Sends `count` replies, then the requested failure (if any) as trailers,
    /// so a test sees a non-OK status arrive after data.
    async fn server_stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<Self::ServerStreamStream>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let req = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let cancelled = self.cancelled.clone();
        tokio::spawn(async move {
            let guard = CancelGuard::new(&cancelled);
            for index in 0..req.count {
                if req.delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(req.delay_ms.into())).await;
                }
                let item = EchoResponse {
                    message: req.message.clone(),
                    index,
                    metadata: Vec::new(),
                };
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
            if let Some(status) = requested_failure(&req) {
                let _ = tx.send(Err(status)).await;
            }
            guard.disarm();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// Answers with the messages joined by ',' and their count in `index`.
    async fn client_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoResponse>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut stream = request.into_inner();
        let mut messages = Vec::new();
        while let Some(req) = stream.next().await {
            let req = req?;
            if let Some(status) = requested_failure(&req) {
                return Err(status);
            }
            messages.push(req.message);
        }
        Ok(Response::new(EchoResponse {
            index: u32::try_from(messages.len()).expect("fewer than 2^32 messages"),
            message: messages.join(","),
            metadata: Vec::new(),
        }))
    }

    type BidiStream = ResponseStream;

    /// Answers each message as it arrives (index = its position), so a test
    /// can ping-pong and prove the proxy does not buffer either direction.
    async fn bidi(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::BidiStream>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut index = 0;
            while let Some(req) = inbound.next().await {
                let reply = match req {
                    Ok(req) => match requested_failure(&req) {
                        Some(status) => Err(status),
                        None => Ok(EchoResponse {
                            message: req.message,
                            index,
                            metadata: Vec::new(),
                        }),
                    },
                    Err(status) => Err(status),
                };
                let stop = reply.is_err();
                if tx.send(reply).await.is_err() || stop {
                    return;
                }
                index += 1;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A tonic client over a fresh h2c connection to `addr`.
pub async fn connect(addr: SocketAddr) -> pb::echo_client::EchoClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint URI")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("h2c connection to {addr}: {e}"));
    pb::echo_client::EchoClient::new(channel)
}

/// One unary call as plain HTTP/2, bypassing tonic: tonic's channel enforces
/// `grpc-timeout` itself and folds HTTP status and headers into a `Status`,
/// which would hide whether the *proxy* answered and how.
pub async fn raw_unary(
    addr: SocketAddr,
    req: &EchoRequest,
    extra_headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    let mut headers = vec![("content-type", "application/grpc"), ("te", "trailers")];
    headers.extend_from_slice(extra_headers);
    let msg = prost::Message::encode_to_vec(req);
    let mut frame = BytesMut::with_capacity(5 + msg.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(msg.len()).expect("small message"));
    frame.put_slice(&msg);
    client::request_h2_bytes(
        Method::POST,
        &format!("http://{addr}/trellis.test.echo.Echo/Unary"),
        &headers,
        frame.freeze(),
    )
    .await
}

/// The first message of a raw reply's body (gRPC framing: flag, length, bytes).
pub fn raw_message(reply: &Reply) -> Option<EchoResponse> {
    let body = reply.body.as_ref();
    let len = u32::from_be_bytes(body.get(1..5)?.try_into().ok()?) as usize;
    prost::Message::decode(body.get(5..5 + len)?).ok()
}

/// `grpc-status` of a raw reply: from the trailers, or from the headers of a
/// trailers-only response (which is how Envoy sends its local replies).
pub fn raw_grpc_status(reply: &Reply) -> Option<(i32, String)> {
    let from = |map: &http::HeaderMap| {
        let code = map.get("grpc-status")?.to_str().ok()?.parse().ok()?;
        let message = map
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        Some((code, message))
    };
    reply
        .trailers
        .as_ref()
        .and_then(from)
        .or_else(|| from(&reply.headers))
}

/// Percent-decodes a `grpc-message` value (gRPC spec: percent-encoded UTF-8).
pub fn decode_grpc_message(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A body of `n` bytes, for messages big enough to exercise flow control.
pub fn payload(n: usize) -> String {
    "x".repeat(n)
}
