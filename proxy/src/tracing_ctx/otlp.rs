//! OTLP span export, over gRPC or HTTP/protobuf. The OTLP messages trellis
//! sends are declared here (field numbers from opentelemetry-proto's
//! `trace/v1`), since the proto crate set trellis builds does not include
//! them. Spans queue in a bounded channel that requests only `try_send` to;
//! one task per collector batches them, so a dead or slow collector costs
//! dropped spans, never latency.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::Full;
use tokio::sync::mpsc;

use super::{ExportTarget, Transport};
use crate::shared::Shared;
use crate::stats::{Counter, Scope, Visitor};

/// Spans that may wait for export before new ones are dropped.
const QUEUE_SPANS: usize = 8192;
const BATCH_SPANS: usize = 512;
const BATCH_WAIT: Duration = Duration::from_millis(200);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ScopeSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeSpans {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<Span>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InstrumentationScope {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AnyValue {
    #[prost(oneof = "any_value::Value", tags = "1, 3")]
    pub value: Option<any_value::Value>,
}

pub mod any_value {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(string, tag = "1")]
        StringValue(String),
        #[prost(int64, tag = "3")]
        IntValue(i64),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Span {
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub span_id: Vec<u8>,
    #[prost(string, tag = "3")]
    pub trace_state: String,
    #[prost(bytes = "vec", tag = "4")]
    pub parent_span_id: Vec<u8>,
    #[prost(string, tag = "5")]
    pub name: String,
    /// 2 server, 3 client.
    #[prost(int32, tag = "6")]
    pub kind: i32,
    #[prost(fixed64, tag = "7")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    pub end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    #[prost(message, optional, tag = "15")]
    pub status: Option<Status>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    #[prost(string, tag = "2")]
    pub message: String,
    /// 0 unset, 1 ok, 2 error.
    #[prost(int32, tag = "3")]
    pub code: i32,
}

pub const SPAN_KIND_SERVER: i32 = 2;
pub const SPAN_KIND_CLIENT: i32 = 3;

pub fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub fn string_attr(key: &str, v: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
    }
}

pub fn int_attr(key: &str, v: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(v)),
        }),
    }
}

#[derive(Default)]
struct TraceStats {
    spans_sent: Counter,
    spans_dropped: Counter,
}

fn stats() -> &'static TraceStats {
    static S: OnceLock<TraceStats> = OnceLock::new();
    S.get_or_init(TraceStats::default)
}

/// Lists the exporter counters, for the admin pages.
pub fn visit_stats(v: &mut dyn Visitor) {
    let scope = Scope::new("tracing.opentelemetry", None);
    v.counter(&scope, "spans_sent", stats().spans_sent.get());
    v.counter(&scope, "spans_dropped", stats().spans_dropped.get());
}

/// One collector's queue. Connection managers that name the same collector
/// and service share it.
pub struct Exporter {
    tx: mpsc::Sender<Span>,
    node_id: Arc<str>,
}

impl Exporter {
    /// The exporter for `target`, started on first use. `None` outside a
    /// tokio runtime (config validation), where nothing is ever traced.
    pub fn get(target: &ExportTarget, shared: &Arc<Shared>) -> Option<Arc<Exporter>> {
        type Registry = Mutex<HashMap<ExportTarget, Weak<Exporter>>>;
        static ALL: OnceLock<Registry> = OnceLock::new();
        let mut all = ALL
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        all.retain(|_, w| w.strong_count() > 0);
        if let Some(e) = all.get(target).and_then(Weak::upgrade) {
            return Some(e);
        }
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = mpsc::channel(QUEUE_SPANS);
        rt.spawn(export_loop(target.clone(), Arc::downgrade(shared), rx));
        let e = Arc::new(Exporter {
            tx,
            node_id: Arc::from(shared.node.id.as_str()),
        });
        all.insert(target.clone(), Arc::downgrade(&e));
        Some(e)
    }

    /// Never waits: a full queue drops the span and counts it.
    pub fn send(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            stats().spans_dropped.inc();
        }
    }

    /// The proxy's node id, a tag on every span.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// An exporter whose queue the test reads.
    #[cfg(test)]
    pub(crate) fn to_channel(node_id: &str) -> (Exporter, mpsc::Receiver<Span>) {
        let (tx, rx) = mpsc::channel(QUEUE_SPANS);
        let e = Exporter {
            tx,
            node_id: Arc::from(node_id),
        };
        (e, rx)
    }
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

async fn export_loop(target: ExportTarget, shared: Weak<Shared>, mut rx: mpsc::Receiver<Span>) {
    let client: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(target.transport == Transport::Grpc)
            .build_http();
    let resource = Resource {
        attributes: vec![string_attr("service.name", target.service_name.as_ref())],
    };
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while batch.len() < BATCH_SPANS {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let Some(addr) = shared.upgrade().and_then(|s| {
            let snap = s.snapshot.load();
            Some(
                snap.clusters
                    .get(&target.collector_cluster)?
                    .pick(crate::rng::random())?
                    .addr,
            )
        }) else {
            stats().spans_dropped.add(n);
            continue;
        };
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "trellis-proxy".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }),
                    spans: batch,
                }],
            }],
        };
        let sent = match &target.transport {
            Transport::Grpc => {
                tokio::time::timeout(EXPORT_TIMEOUT, send_grpc(&client, addr, &req)).await
            }
            Transport::Http {
                authority,
                path,
                timeout,
                headers,
            } => {
                let post = Post {
                    addr,
                    authority,
                    path,
                    headers,
                };
                tokio::time::timeout(*timeout, send_http(&client, post, &req)).await
            }
        };
        match sent {
            Ok(true) => stats().spans_sent.add(n),
            _ => stats().spans_dropped.add(n),
        }
    }
}

/// Where and how an OTLP/HTTP batch is posted.
struct Post<'a> {
    addr: std::net::SocketAddr,
    authority: &'a str,
    path: &'a str,
    headers: &'a [(http::HeaderName, http::HeaderValue)],
}

/// One OTLP/HTTP export (`application/x-protobuf`); `true` on a 2xx.
async fn send_http(client: &HttpClient, post: Post<'_>, req: &ExportTraceServiceRequest) -> bool {
    use http_body_util::BodyExt;
    use prost::Message;
    let mut b = http::Request::post(format!("http://{}{}", post.addr, post.path))
        .header(http::header::HOST, post.authority)
        .header(http::header::CONTENT_TYPE, "application/x-protobuf");
    for (k, v) in post.headers {
        b = b.header(k, v);
    }
    let Ok(request) = b.body(Full::new(Bytes::from(req.encode_to_vec()))) else {
        return false;
    };
    let Ok(resp) = client.request(request).await else {
        return false;
    };
    let ok = resp.status().is_success();
    // Read the answer so the connection can be reused.
    let _ = resp.into_body().collect().await;
    ok
}

/// One unary gRPC call; `true` when the collector answered `grpc-status: 0`.
async fn send_grpc(
    client: &HttpClient,
    addr: std::net::SocketAddr,
    req: &ExportTraceServiceRequest,
) -> bool {
    use http_body_util::BodyExt;
    use prost::Message;
    let msg = req.encode_to_vec();
    let mut framed = BytesMut::with_capacity(msg.len() + 5);
    framed.put_u8(0);
    framed.put_u32(msg.len() as u32);
    framed.put_slice(&msg);
    let Ok(request) = http::Request::post(format!("http://{addr}{EXPORT_PATH}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(Full::new(framed.freeze()))
    else {
        return false;
    };
    let Ok(resp) = client.request(request).await else {
        return false;
    };
    if resp.status() != http::StatusCode::OK {
        return false;
    }
    let header_status = resp.headers().get("grpc-status").cloned();
    let Ok(body) = resp.into_body().collect().await else {
        return false;
    };
    let status = body
        .trailers()
        .and_then(|t| t.get("grpc-status").cloned())
        .or(header_status);
    status.is_some_and(|s| s.as_bytes() == b"0")
}
