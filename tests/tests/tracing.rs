//! Tracing end to end: two trellis proxies export spans over OTLP/gRPC to a
//! small receiver in the test; the spans of both hops must form one linked
//! trace. A dead collector must not fail or slow requests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::net::TcpListener;
use trellis_tests::config::{cluster, http_proxy, indent};
use trellis_tests::process::ProxyProcess;
use trellis_tests::upstream::Echo;
use trellis_tests::{client, eventually, free_port, loopback, refused_address, within};

const LIMIT: Duration = Duration::from_secs(90);

/// The parts of OTLP's `ExportTraceServiceRequest` the test reads.
#[derive(Clone, PartialEq, Message)]
struct ExportRequest {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, Message)]
struct ResourceSpans {
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<ScopeSpans>,
}

#[derive(Clone, PartialEq, Message)]
struct ScopeSpans {
    #[prost(message, repeated, tag = "2")]
    spans: Vec<Span>,
}

#[derive(Clone, PartialEq, Message)]
struct Span {
    #[prost(bytes = "vec", tag = "1")]
    trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    span_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    parent_span_id: Vec<u8>,
    #[prost(string, tag = "5")]
    name: String,
    #[prost(int32, tag = "6")]
    kind: i32,
}

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// An OTLP/gRPC trace receiver on loopback that keeps every span it gets.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let kept = spans.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let kept = kept.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let kept = kept.clone();
                        async move {
                            assert_eq!(
                                req.uri().path(),
                                "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
                            );
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            if let Some(msg) = body.get(5..) {
                                if let Ok(r) = ExportRequest::decode(msg) {
                                    let mut k = kept.lock().unwrap_or_else(|p| p.into_inner());
                                    for rs in r.resource_spans {
                                        for ss in rs.scope_spans {
                                            k.extend(ss.spans);
                                        }
                                    }
                                }
                            }
                            // An empty ExportTraceServiceResponse, then OK.
                            let resp = http::Response::builder()
                                .header("content-type", "application/grpc")
                                .header("grpc-status", "0")
                                .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
                                .expect("response");
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver { addr, spans, task }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn tracing_hcm(service: &str) -> String {
    indent(
        &format!(
            r#"tracing:
  provider:
    name: envoy.tracers.opentelemetry
    typed_config:
      "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
      grpc_service:
        envoy_grpc: {{ cluster_name: otel }}
      service_name: {service}
"#
        ),
        10,
    )
}

fn proxy(port: u16, next: SocketAddr, name: &str, collector: SocketAddr) -> String {
    let vhosts = r#"- name: all
  domains: ["*"]
  routes:
  - match: { prefix: "/" }
    route: { cluster: next }
"#;
    http_proxy(
        port,
        &indent(vhosts, 10),
        &[
            cluster("next", &[next], ""),
            cluster("otel", &[collector], ""),
        ],
        &tracing_hcm(name),
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hops_export_one_linked_trace() {
    within(LIMIT, "two-hop tracing", async {
        let receiver = Receiver::start().await;
        let echo = Echo::start("echo").await;
        let (pa, pb) = (free_port(), free_port());
        let _b = ProxyProcess::start(&proxy(pb, echo.addr, "hop-b", receiver.addr)).await;
        let _a = ProxyProcess::start(&proxy(pa, loopback(pb), "hop-a", receiver.addr)).await;

        let incoming_parent = "00f067aa0ba902b7";
        let r = client::request(
            http::Method::GET,
            &format!("http://127.0.0.1:{pa}/traced"),
            &[(
                "traceparent",
                &format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{incoming_parent}-01"),
            )],
            "",
        )
        .await
        .expect("traced request");
        assert_eq!(r.status, 200);
        let upstream_tp = r.echoed()["headers"]["traceparent"]
            .as_str()
            .unwrap_or_default()
            .to_string();

        let spans = eventually(
            Duration::from_secs(15),
            "four spans at the receiver",
            || async {
                let s = receiver.spans();
                (s.len() >= 4).then_some(s)
            },
        )
        .await;
        assert_eq!(spans.len(), 4, "{spans:#?}");
        for s in &spans {
            assert_eq!(
                hex(&s.trace_id),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "one trace id"
            );
        }
        let find = |kind: i32, parent: &[u8]| {
            spans
                .iter()
                .find(|s| s.kind == kind && s.parent_span_id == parent)
                .unwrap_or_else(|| panic!("no kind {kind} span under {}: {spans:#?}", hex(parent)))
        };
        let parent = (0..8)
            .map(|i| u8::from_str_radix(&incoming_parent[i * 2..i * 2 + 2], 16).expect("hex"))
            .collect::<Vec<u8>>();
        let a_server = find(SERVER, &parent);
        let a_client = find(CLIENT, &a_server.span_id);
        let b_server = find(SERVER, &a_client.span_id);
        let b_client = find(CLIENT, &b_server.span_id);
        assert_eq!(b_client.name, "router next egress");
        assert_eq!(
            upstream_tp,
            format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
                hex(&b_client.span_id)
            ),
            "the upstream sees hop B's client span as its parent"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_does_not_fail_or_slow_requests() {
    within(LIMIT, "dead collector", async {
        let (dead, _guard) = refused_address();
        let echo = Echo::start("echo").await;
        let port = free_port();
        let p = ProxyProcess::start(&proxy(port, echo.addr, "lonely", dead)).await;
        let started = std::time::Instant::now();
        for _ in 0..50 {
            let r = client::get(&format!("http://127.0.0.1:{port}/"))
                .await
                .expect("request");
            assert_eq!(r.status, 200);
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "requests were slowed"
        );
        eventually(Duration::from_secs(15), "dropped spans counted", || async {
            (p.stat("tracing.opentelemetry.spans_dropped").await > 0).then_some(())
        })
        .await;
        assert_eq!(p.stat("tracing.opentelemetry.spans_sent").await, 0);
    })
    .await;
}
