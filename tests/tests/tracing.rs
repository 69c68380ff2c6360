//! Tracing end to end: two trellis proxies export spans over OTLP (gRPC, or
//! HTTP/protobuf) to a receiver in the test (`opentelemetry-proto`'s tonic
//! TraceService); the spans of both hops must form one linked trace, with a
//! client span per upstream attempt, whatever propagation format the request
//! came with; sampling follows the configured percentage and the caller's
//! decision. A dead collector, or
//! one that never answers, must not fail or slow requests.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use trellis_tests::config::{cluster, http_proxy, indent};
use trellis_tests::control::Control;
use trellis_tests::otlp::{attr, Receiver, Span, Stalled, CLIENT, SERVER};
use trellis_tests::process::{require_envoy, workspace_bin, ProxyProcess};
use trellis_tests::upstream::Echo;
use trellis_tests::{client, eventually, free_port, loopback, refused_address, within};

const LIMIT: Duration = Duration::from_secs(90);

/// The HCM's `tracing` block: OTLP/gRPC to cluster `otel`, plus `extra`
/// (sampling percentages, YAML at the block's indent).
fn tracing_hcm(service: &str, extra: &str) -> String {
    indent(
        &format!(
            r#"tracing:
{extra}  provider:
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

/// Like [`tracing_hcm`], over OTLP/HTTP to `/v1/traces` with an API key.
fn tracing_hcm_http(service: &str) -> String {
    indent(
        &format!(
            r#"tracing:
  provider:
    name: envoy.tracers.opentelemetry
    typed_config:
      "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
      http_service:
        http_uri: {{ uri: "http://collector:4318/v1/traces", cluster: otel, timeout: 2s }}
        request_headers_to_add:
        - header: {{ key: x-api-key, value: secret }}
      service_name: {service}
"#
        ),
        10,
    )
}

/// A hop sending everything to `next`; `/status/` is retried twice on 5xx.
fn traced_proxy(port: u16, next: SocketAddr, collector: SocketAddr, tracing: &str) -> String {
    retrying_proxy(port, next, collector, tracing, "/status/")
}

/// Like [`traced_proxy`], retrying what starts with `retried`.
fn retrying_proxy(
    port: u16,
    next: SocketAddr,
    collector: SocketAddr,
    tracing: &str,
    retried: &str,
) -> String {
    let vhosts = format!(
        r#"- name: all
  domains: ["*"]
  routes:
  - match: {{ prefix: "{retried}" }}
    name: retried
    route:
      cluster: next
      retry_policy: {{ retry_on: 5xx, num_retries: 2 }}
  - match: {{ prefix: "/" }}
    name: plain
    route: {{ cluster: next }}
"#
    );
    http_proxy(
        port,
        &indent(&vhosts, 10),
        &[
            cluster("next", &[next], ""),
            cluster("otel", &[collector], ""),
        ],
        tracing,
    )
}

fn proxy(port: u16, next: SocketAddr, name: &str, collector: SocketAddr) -> String {
    traced_proxy(port, next, collector, &tracing_hcm(name, ""))
}

/// Names the bootstrap's node, for the `node_id` span tag.
fn with_node(id: &str, bootstrap: String) -> String {
    format!("node: {{ id: {id}, cluster: test }}\n{bootstrap}")
}

/// The spans of trace `trace` (hex) once at least `n` have arrived.
async fn trace_spans(receiver: &Receiver, trace: &str, n: usize) -> Vec<Span> {
    eventually(
        Duration::from_secs(15),
        &format!("{n} spans of trace {trace}"),
        || async {
            let s: Vec<Span> = receiver
                .spans()
                .into_iter()
                .filter(|s| hex(&s.trace_id) == trace)
                .collect();
            (s.len() >= n).then_some(s)
        },
    )
    .await
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).expect("hex"))
        .collect()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_retry_is_a_client_span_and_the_next_hop_hangs_under_it() {
    within(LIMIT, "retries as spans", async {
        let receiver = Receiver::start().await;
        let echo = Echo::start("echo").await;
        let (pa, pb) = (free_port(), free_port());
        let b = retrying_proxy(
            pb,
            echo.addr,
            receiver.addr,
            &tracing_hcm("hop-b", ""),
            "/none/",
        );
        let _b = ProxyProcess::start(&with_node("hop-b", b)).await;
        let a = traced_proxy(pa, loopback(pb), receiver.addr, &tracing_hcm("hop-a", ""));
        let _a = ProxyProcess::start(&with_node("hop-a", a)).await;

        let trace = "0af7651916cd43dd8448eb211c80319c";
        let r = client::request(
            http::Method::GET,
            &format!("http://127.0.0.1:{pa}/status/503"),
            &[("traceparent", &format!("00-{trace}-b7ad6b7169203331-01"))],
            "",
        )
        .await
        .expect("request");
        assert_eq!(r.status, 503);

        // A: a server span and three tries; B: a server and a client span per try.
        let spans = trace_spans(&receiver, trace, 10).await;
        assert_eq!(spans.len(), 10, "{spans:#?}");
        let a_server = spans
            .iter()
            .find(|s| s.kind == SERVER && s.parent_span_id == unhex("b7ad6b7169203331"))
            .expect("A's server span");
        for (k, v) in [
            ("http.method", "GET".to_string()),
            ("http.url", format!("http://127.0.0.1:{pa}/status/503")),
            ("route_name", "retried".to_string()),
            ("http.status_code", "503".to_string()),
            ("response_flags", "URX".to_string()),
            ("upstream_cluster", "next".to_string()),
            ("node_id", "hop-a".to_string()),
            ("peer.address", "127.0.0.1".to_string()),
        ] {
            assert_eq!(
                attr(a_server, k).as_deref(),
                Some(v.as_str()),
                "A server {k}"
            );
        }
        let mut tries: Vec<&Span> = spans
            .iter()
            .filter(|s| s.kind == CLIENT && s.parent_span_id == a_server.span_id)
            .collect();
        tries.sort_by_key(|s| attr(s, "upstream.attempt"));
        assert_eq!(tries.len(), 3, "one client span per try: {spans:#?}");
        for (i, t) in tries.iter().enumerate() {
            assert_eq!(attr(t, "upstream.attempt"), Some((i + 1).to_string()));
            assert_eq!(attr(t, "http.status_code").as_deref(), Some("503"));
            assert_eq!(attr(t, "upstream_address"), Some(format!("127.0.0.1:{pb}")));
            assert_eq!(attr(t, "node_id").as_deref(), Some("hop-a"));
            assert_eq!(t.name, "router next egress");
        }
        // Each of B's server spans is the child of a different try.
        let b_servers: Vec<&Span> = spans
            .iter()
            .filter(|s| s.kind == SERVER && s.span_id != a_server.span_id)
            .collect();
        assert_eq!(b_servers.len(), 3);
        for t in &tries {
            let b = b_servers
                .iter()
                .find(|s| s.parent_span_id == t.span_id)
                .unwrap_or_else(|| panic!("no B span under try {}", hex(&t.span_id)));
            assert_eq!(attr(b, "node_id").as_deref(), Some("hop-b"));
            let below = spans
                .iter()
                .filter(|s| s.kind == CLIENT && s.parent_span_id == b.span_id)
                .count();
            assert_eq!(below, 1, "B tries once per request");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_propagation_format_links_both_hops() {
    within(LIMIT, "propagation formats", async {
        let receiver = Receiver::start().await;
        let echo = Echo::start("echo").await;
        let (pa, pb) = (free_port(), free_port());
        let _b = ProxyProcess::start(&proxy(pb, echo.addr, "hop-b", receiver.addr)).await;
        let _a = ProxyProcess::start(&proxy(pa, loopback(pb), "hop-a", receiver.addr)).await;

        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
        let cases: [Case; 3] = [
            (
                "b3 single",
                "80f198ee56343ba864fe8b2a57d3eff7",
                &[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")],
            ),
            (
                "b3 multi",
                "463ac35c9f6413ad48485a3953bb6124",
                &[
                    ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
                    ("x-b3-spanid", "e457b5a2e4d86bd1"),
                    ("x-b3-sampled", "1"),
                ],
            ),
            (
                "x-amzn-trace-id",
                "5759e988bd862e3fe1be46a994272793",
                &[(
                    "x-amzn-trace-id",
                    "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=e457b5a2e4d86bd1;Sampled=1",
                )],
            ),
        ];
        for (format, trace, headers) in cases {
            let r = client::request(
                http::Method::GET,
                &format!("http://127.0.0.1:{pa}/p"),
                headers,
                "",
            )
            .await
            .expect("request");
            assert_eq!(r.status, 200);
            let seen = r.echoed()["headers"].clone();
            let spans = trace_spans(&receiver, trace, 4).await;
            assert_eq!(spans.len(), 4, "{format}: {spans:#?}");
            let under = |kind: i32, parent: &[u8]| {
                spans
                    .iter()
                    .find(|s| s.kind == kind && s.parent_span_id == parent)
                    .unwrap_or_else(|| panic!("{format}: no kind {kind} under {}", hex(parent)))
            };
            let a_server = under(SERVER, &unhex("e457b5a2e4d86bd1"));
            let a_client = under(CLIENT, &a_server.span_id);
            let b_server = under(SERVER, &a_client.span_id);
            let b_client = under(CLIENT, &b_server.span_id);
            let (span, parent) = (hex(&b_client.span_id), hex(&b_server.span_id));
            // The upstream sees the request's own format, naming B's try.
            let header = |h: &str| seen[h].as_str().unwrap_or_default().to_string();
            match format {
                "b3 single" => assert_eq!(header("b3"), format!("{trace}-{span}-1-{parent}")),
                "b3 multi" => {
                    assert_eq!(header("x-b3-traceid"), trace);
                    assert_eq!(header("x-b3-spanid"), span);
                    assert_eq!(header("x-b3-parentspanid"), parent);
                    assert_eq!(header("x-b3-sampled"), "1");
                }
                _ => assert_eq!(
                    header("x-amzn-trace-id"),
                    format!(
                        "Root=1-{}-{};Parent={span};Sampled=1",
                        &trace[..8],
                        &trace[8..]
                    )
                ),
            }
            assert_eq!(header("traceparent"), format!("00-{trace}-{span}-01"));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_percentage_and_the_callers_decision() {
    within(LIMIT, "sampling", async {
        let receiver = Receiver::start().await;
        let echo = Echo::start("echo").await;
        let (pa, pb, pc) = (free_port(), free_port(), free_port());
        let _b = ProxyProcess::start(&proxy(pb, echo.addr, "hop-b", receiver.addr)).await;
        let never = tracing_hcm("hop-a", "  random_sampling: { value: 0 }\n");
        let _a = ProxyProcess::start(&traced_proxy(pa, loopback(pb), receiver.addr, &never)).await;
        let half = tracing_hcm("half", "  random_sampling: { value: 50 }\n");
        let _c = ProxyProcess::start(&traced_proxy(pc, echo.addr, receiver.addr, &half)).await;
        let get = |port: u16, headers: Vec<(&'static str, String)>| async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = client::request(
                http::Method::GET,
                &format!("http://127.0.0.1:{port}/"),
                &h,
                "",
            )
            .await
            .expect("request");
            assert_eq!(r.status, 200);
            r.echoed()["headers"].clone()
        };

        // 0%: a new trace is not sampled, and B follows A's decision.
        let seen = get(pa, vec![]).await;
        let tp = seen["traceparent"].as_str().unwrap_or_default().to_string();
        assert!(tp.ends_with("-00"), "unsampled is propagated as such: {tp}");
        // The caller said no: nobody records it, whatever the percentage.
        let no = vec![
            (
                "x-b3-traceid",
                "a3ce929d0e0e47364bf92f3577b34da6".to_string(),
            ),
            ("x-b3-spanid", "00f067aa0ba902b7".to_string()),
            ("x-b3-sampled", "0".to_string()),
        ];
        get(pb, no).await;
        // The caller said yes: both hops record it despite A's 0%.
        let yes = "4bf92f3577b34da6a3ce929d0e0e4736";
        get(
            pa,
            vec![("traceparent", format!("00-{yes}-00f067aa0ba902b7-01"))],
        )
        .await;
        // The exporters are queues: once this trace is in, no earlier span is pending.
        trace_spans(&receiver, yes, 4).await;
        let all = receiver.spans();
        assert_eq!(all.len(), 4, "only the sampled trace: {all:#?}");

        // 50%: within five standard deviations of half of 200 new traces.
        for _ in 0..200 {
            get(pc, vec![]).await;
        }
        let marker = "d4cda95b652f4a1592b449d5929fda1b";
        get(
            pc,
            vec![("traceparent", format!("00-{marker}-00f067aa0ba902b7-01"))],
        )
        .await;
        trace_spans(&receiver, marker, 2).await;
        let sampled = receiver
            .spans()
            .iter()
            .filter(|s| s.kind == SERVER && hex(&s.trace_id) != marker && hex(&s.trace_id) != yes)
            .count();
        assert!(
            (65..=135).contains(&sampled),
            "{sampled} of 200 sampled at 50%"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_export_over_otlp_http_protobuf() {
    within(LIMIT, "OTLP/HTTP", async {
        let receiver = Receiver::start().await;
        let echo = Echo::start("echo").await;
        let port = free_port();
        let p = ProxyProcess::start(&traced_proxy(
            port,
            echo.addr,
            receiver.http_addr,
            &tracing_hcm_http("over-http"),
        ))
        .await;
        let trace = "9a3ce929d0e0e4736b4bf92f3577b34d";
        let r = client::request(
            http::Method::GET,
            &format!("http://127.0.0.1:{port}/"),
            &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
            "",
        )
        .await
        .expect("request");
        assert_eq!(r.status, 200);
        let spans = trace_spans(&receiver, trace, 2).await;
        assert_eq!(spans.iter().filter(|s| s.kind == SERVER).count(), 1);
        assert_eq!(spans.iter().filter(|s| s.kind == CLIENT).count(), 1);
        assert_eq!(p.stat("tracing.opentelemetry.spans_sent").await, 2);
        let headers = receiver.http_headers();
        assert_eq!(headers[0]["x-api-key"], "secret");
        assert!(receiver
            .received()
            .iter()
            .all(|r| r.service_name == "over-http"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_does_not_fail_or_slow_requests() {
    within(LIMIT, "stalled collector", async {
        let stalled = Stalled::start().await;
        let echo = Echo::start("echo").await;
        let port = free_port();
        let p = ProxyProcess::start(&proxy(port, echo.addr, "patient", stalled.addr)).await;
        let get = || async {
            let r = client::get(&format!("http://127.0.0.1:{port}/"))
                .await
                .expect("request");
            assert_eq!(r.status, 200);
        };
        get().await;
        // An export is now stuck in the collector; requests go on meanwhile.
        eventually(Duration::from_secs(10), "an export sent", || async {
            (stalled.received() > 0).then_some(())
        })
        .await;
        let started = std::time::Instant::now();
        for _ in 0..50 {
            get().await;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "requests were slowed"
        );
        eventually(
            Duration::from_secs(15),
            "the stuck export dropped",
            || async { (p.stat("tracing.opentelemetry.spans_dropped").await > 0).then_some(()) },
        )
        .await;
        assert_eq!(p.stat("tracing.opentelemetry.spans_sent").await, 0);
    })
    .await;
}

/// A mesh traced with one setting: `trellis-control serve --otlp-endpoint`
/// makes every connection manager it sends export to the collector. A
/// request through node `client`'s sidecar to node `server`'s gives spans
/// from both hops in one trace, each named for its virtual node, the second
/// hop's hanging under the first's.
async fn mesh_traced_from_the_control_plane(proxy: std::path::PathBuf) {
    let receiver = Receiver::start().await;
    let app = Echo::start("app").await;
    let endpoint = format!("http://{}", receiver.addr);
    let control = Control::start_with(
        tempfile::tempdir().expect("temp dir"),
        &["--otlp-endpoint", &endpoint],
    )
    .await;
    control
        .apply(&[
            json!({"meshName": "m", "spec": {}}),
            json!({"meshName": "m", "virtualNodeName": "client", "spec": {
                "backends": [{"virtualService": {"virtualServiceName": "svc"}}]}}),
            json!({"meshName": "m", "virtualNodeName": "server", "spec": {
                "listeners": [{"portMapping": {"port": app.addr.port(), "protocol": "http"}}]}}),
            json!({"meshName": "m", "virtualServiceName": "svc", "spec": {
                "provider": {"virtualNode": {"virtualNodeName": "server"}}}}),
        ])
        .await;
    let egress = free_port();
    let mut proxies = Vec::new();
    for (node, ports) in [
        ("server", (free_port(), free_port())),
        ("client", (free_port(), egress)),
    ] {
        let config = control
            .bootstrap(("--virtual-node", node), ports, &[])
            .await;
        proxies.push(ProxyProcess::start_with(&proxy, &config, &[]).await);
    }
    let url = format!("http://127.0.0.1:{egress}/traced");
    let trace = "5b8efff798038103d269b633813fc60c";
    let parent = "eee19b7ec3c1b174";
    let traceparent = format!("00-{trace}-{parent}-01");
    eventually(
        Duration::from_secs(10),
        "a request through both sidecars",
        || {
            let (url, traceparent) = (url.clone(), traceparent.clone());
            async move {
                let r = client::request(
                    http::Method::GET,
                    &url,
                    &[("host", "svc"), ("traceparent", &traceparent)],
                    "",
                )
                .await
                .ok()?;
                (r.status == 200).then_some(())
            }
        },
    )
    .await;
    let spans = eventually(Duration::from_secs(15), "spans of both hops", || async {
        let spans: Vec<_> = receiver
            .received()
            .into_iter()
            .filter(|r| hex(&r.span.trace_id) == trace)
            .collect();
        let from = |service: &str| spans.iter().any(|r| r.service_name == service);
        (from("m/client") && from("m/server")).then_some(spans)
    })
    .await;
    let of = |service: &str| -> Vec<&Span> {
        spans
            .iter()
            .filter(|r| r.service_name == service)
            .map(|r| &r.span)
            .collect()
    };
    let (client_spans, server_spans) = (of("m/client"), of("m/server"));
    assert!(
        client_spans
            .iter()
            .any(|s| s.parent_span_id == unhex(parent)),
        "the first hop continues the caller's trace: {spans:#?}"
    );
    assert!(
        server_spans
            .iter()
            .any(|s| client_spans.iter().any(|c| c.span_id == s.parent_span_id)),
        "the second hop hangs under the first: {spans:#?}"
    );
    drop((proxies, control));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_is_traced_with_one_control_plane_setting() {
    within(
        LIMIT,
        "mesh tracing",
        mesh_traced_from_the_control_plane(workspace_bin("trellis-proxy")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_of_stock_envoy_sidecars_is_traced_the_same_way() {
    within(
        LIMIT,
        "mesh tracing on Envoy",
        mesh_traced_from_the_control_plane(require_envoy()),
    )
    .await;
}
