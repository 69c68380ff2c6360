//! OTLP trace collectors for tests. [`Receiver`] is a tonic `TraceService`
//! server (OTLP/gRPC) plus an OTLP/HTTP endpoint, both decoding with the
//! `opentelemetry-proto` crate's generated types: what a proxy exports is
//! checked against the collector's schema and gRPC framing, not against the
//! proxy's own message definitions. [`Stalled`] accepts and never answers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

pub use opentelemetry_proto::tonic::trace::v1::Span;

/// OTLP's `SPAN_KIND_SERVER` and `SPAN_KIND_CLIENT`.
pub const SERVER: i32 = opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server as i32;
pub const CLIENT: i32 = opentelemetry_proto::tonic::trace::v1::span::SpanKind::Client as i32;

/// The OTLP/HTTP path the receiver serves.
pub const HTTP_PATH: &str = "/v1/traces";

/// A span as received, with its resource's `service.name`.
#[derive(Debug, Clone)]
pub struct Received {
    pub service_name: String,
    pub span: Span,
}

#[derive(Default)]
struct Store {
    spans: Mutex<Vec<Received>>,
    http_headers: Mutex<Vec<http::HeaderMap>>,
}

impl Store {
    fn keep(&self, request: ExportTraceServiceRequest) {
        let mut kept = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        for rs in request.resource_spans {
            let service_name = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref()?.value.as_ref())
                .and_then(|v| match v {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                kept.extend(ss.spans.into_iter().map(|span| Received {
                    service_name: service_name.clone(),
                    span,
                }));
            }
        }
    }
}

struct Grpc(Arc<Store>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.keep(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A collector on loopback that keeps every span: OTLP/gRPC on `addr`,
/// OTLP/HTTP (protobuf) on `http_addr` at [`HTTP_PATH`].
pub struct Receiver {
    pub addr: SocketAddr,
    pub http_addr: SocketAddr,
    store: Arc<Store>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let store = Arc::new(Store::default());
        let grpc = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind OTLP/gRPC");
        let addr = grpc.local_addr().expect("OTLP/gRPC address");
        let svc = TraceServiceServer::new(Grpc(store.clone()));
        let grpc_task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(TcpListenerStream::new(grpc))
                .await;
        });
        let http = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind OTLP/HTTP");
        let http_addr = http.local_addr().expect("OTLP/HTTP address");
        let http_task = tokio::spawn(serve_http(http, store.clone()));
        Receiver {
            addr,
            http_addr,
            store,
            tasks: vec![grpc_task, http_task],
        }
    }

    /// Every span received so far, over either transport.
    pub fn received(&self) -> Vec<Received> {
        self.store
            .spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn spans(&self) -> Vec<Span> {
        self.received().into_iter().map(|r| r.span).collect()
    }

    /// The headers of each OTLP/HTTP export request, in order.
    pub fn http_headers(&self) -> Vec<http::HeaderMap> {
        self.store
            .http_headers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// OTLP/HTTP: `POST /v1/traces`, an `application/x-protobuf` body holding an
/// `ExportTraceServiceRequest`, answered with an empty response message.
async fn serve_http(listener: TcpListener, store: Arc<Store>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let store = store.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let store = store.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.map(|c| c.to_bytes());
                    let status = match (&parts.method, parts.uri.path(), body) {
                        (&http::Method::POST, HTTP_PATH, Ok(body))
                            if parts.headers.get(http::header::CONTENT_TYPE)
                                == Some(&http::HeaderValue::from_static(
                                    "application/x-protobuf",
                                )) =>
                        {
                            match ExportTraceServiceRequest::decode(body) {
                                Ok(r) => {
                                    store.keep(r);
                                    store
                                        .http_headers
                                        .lock()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .push(parts.headers);
                                    http::StatusCode::OK
                                }
                                Err(_) => http::StatusCode::BAD_REQUEST,
                            }
                        }
                        _ => http::StatusCode::BAD_REQUEST,
                    };
                    let body = if status.is_success() {
                        ExportTraceServiceResponse {
                            partial_success: None,
                        }
                        .encode_to_vec()
                    } else {
                        Vec::new()
                    };
                    http::Response::builder()
                        .status(status)
                        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                        .body(Full::new(Bytes::from(body)))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// A collector that accepts connections and reads what it is sent, but
/// never answers: an export to it hangs until the exporter gives up.
pub struct Stalled {
    pub addr: SocketAddr,
    received: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Stalled {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stalled {
    pub async fn start() -> Stalled {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let received = Arc::new(AtomicU64::new(0));
        let counted = received.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let counted = counted.clone();
                conns.spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        counted.fetch_add(n as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        Stalled {
            addr,
            received,
            task,
        }
    }

    /// Bytes read from every connection so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// A span attribute's value as text (integers in decimal).
pub fn attr(span: &Span, key: &str) -> Option<String> {
    match span
        .attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?
    {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        _ => None,
    }
}
