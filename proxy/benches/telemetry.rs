//! What telemetry costs per request on the hot path, with no benchmark
//! framework (nothing to build on a loaded CI box): each case runs for a
//! fixed time and reports nanoseconds per operation. Run with
//! `cargo bench -p trellis-proxy --bench telemetry`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use trellis_proxy::access_log::{self, AccessLogs, Finish, Record};
use trellis_proxy::format::{Context, Format, RequestHead, StreamInfo, DEFAULT_FORMAT};
use trellis_proxy::stats::{ClusterStats, Histogram, HttpStats};

/// Runs `f` in batches for about `budget` and returns ns per call.
fn measure(mut f: impl FnMut()) -> f64 {
    let budget = Duration::from_millis(400);
    for _ in 0..1000 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..1000 {
            f();
        }
        n += 1000;
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn report(name: &str, ns: f64) {
    println!("{name:<58} {ns:>9.1} ns/op");
}

fn main() {
    let stats = ClusterStats::new(Arc::from("bench"));
    report(
        "counter inc (upstream_rq_total)",
        measure(|| stats.upstream_rq_total.inc()),
    );
    report(
        "status code record (upstream_rq_200 + _2xx)",
        measure(|| stats.upstream_rq.record(black_box(200))),
    );
    report(
        "histogram record (upstream_rq_time, 3 ms)",
        measure(|| {
            stats
                .upstream_rq_time
                .record(black_box(Duration::from_millis(3)))
        }),
    );

    // Two threads on one histogram: the contended case of two workers.
    let shared = Arc::new(Histogram::default());
    let other = shared.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let t = std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            other.record(Duration::from_millis(3));
        }
    });
    report(
        "histogram record, another thread recording too",
        measure(|| shared.record(black_box(Duration::from_millis(3)))),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = t.join();

    let peer = "127.0.0.1:5000".parse().expect("address");
    report(
        "StreamInfo::new (per request)",
        measure(|| drop(black_box(StreamInfo::new(peer, None)))),
    );

    // The whole per-request wrapper with no access log: what every request pays.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let no_logs = Arc::new(AccessLogs::default());
    let http_stats = Arc::new(HttpStats::new(Arc::from("bench")));
    report(
        "response wrapper, no access log (wrap + poll + record)",
        measure(|| {
            let resp = http::Response::new(trellis_proxy::body::full("hello"));
            let resp = access_log::finish_response(
                resp,
                Finish {
                    record: Record {
                        info: StreamInfo::new(peer, None),
                        saved: None,
                        trace: None,
                        response_idle: None,
                    },
                    stats: http_stats.clone(),
                    tally: None,
                    logs: no_logs.clone(),
                    tracer: None,
                },
            );
            rt.block_on(async {
                use http_body_util::BodyExt;
                let _ = black_box(resp.into_body().collect().await);
            });
        }),
    );
    report(
        "baseline: same response without the wrapper",
        measure(|| {
            let resp = http::Response::new(trellis_proxy::body::full("hello"));
            rt.block_on(async {
                use http_body_util::BodyExt;
                let _ = black_box(resp.into_body().collect().await);
            });
        }),
    );

    // Rendering Envoy's default access log line.
    let f = Format::parse(DEFAULT_FORMAT).expect("default format");
    let mut info = StreamInfo::new(peer, None);
    info.protocol = Some(http::Version::HTTP_11);
    info.response_code = Some(200);
    info.upstream_host = Some("127.0.0.1:8080".parse().expect("address"));
    let method = http::Method::GET;
    let uri: http::Uri = "/api/items?id=7".parse().expect("uri");
    let mut headers = http::HeaderMap::new();
    headers.insert("user-agent", http::HeaderValue::from_static("curl/8.5"));
    headers.insert(
        "x-request-id",
        http::HeaderValue::from_static("5b3b7a8e-6d1b-4f5e-9b0e-1f2d3c4b5a69"),
    );
    headers.insert("host", http::HeaderValue::from_static("shop.example"));
    let ctx = Context {
        request: Some(RequestHead {
            method: &method,
            uri: &uri,
            scheme: "http",
            headers: &headers,
        }),
        ..Context::new(&info)
    };
    let mut line = String::with_capacity(256);
    let mut traced = http::Request::get("/")
        .body(())
        .expect("request")
        .into_parts()
        .0;
    traced.headers = headers.clone();
    traced.headers.insert(
        "traceparent",
        http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    let sampling = trellis_proxy::tracing_ctx::Sampling::default();
    report(
        "render Envoy's default access log line",
        measure(|| {
            line.clear();
            f.render(black_box(&ctx), false, &mut line);
        }),
    );
    let ip = Format::parse("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%").expect("format");
    report(
        "render a header value operator (client IP)",
        measure(|| drop(black_box(ip.to_string(&ctx, true)))),
    );
    report(
        "trace context: parse traceparent, new span ids, inject",
        measure(|| {
            let mut t =
                trellis_proxy::tracing_ctx::Trace::start(black_box(&traced), "http", &sampling);
            let mut out = traced.headers.clone();
            t.begin_attempt(&mut out);
            black_box((out, t));
        }),
    );
    report(
        "clone request headers (kept only when logging)",
        measure(|| drop(black_box(headers.clone()))),
    );
}
