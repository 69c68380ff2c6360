//! A quick measurement, not a pass/fail test: full mTLS handshakes per
//! second against a trellis listener, and the latency an mTLS hop adds
//! between two proxies compared with plaintext. Run with
//! `cargo test -p trellis-tests --test tls_bench -- --ignored --nocapture`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use trellis_tests::process::ProxyProcess;
use trellis_tests::tls::{client_config, https_get, Ca, Issued, Leaf};
use trellis_tests::upstream::Echo;
use trellis_tests::{free_port, loopback};

const FRONTEND: &str = "spiffe://trellis.test/ns/default/sa/frontend";

fn hcm(cluster: &str) -> serde_json::Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "bench",
            "route_config": { "virtual_hosts": [{ "name": "all", "domains": ["*"],
                "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": cluster } }] }] },
            "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }],
        }
    })
}

fn files(dir: &std::path::Path, name: &str, i: &Issued) -> serde_json::Value {
    let (c, k) = i.write(dir, name);
    json!({ "certificate_chain": { "filename": c }, "private_key": { "filename": k } })
}

/// One proxy: a listener on `port` (TLS if `server` is given) to `upstream`
/// (mTLS if `client` is given).
fn proxy(
    port: u16,
    upstream: SocketAddr,
    server: Option<serde_json::Value>,
    client: Option<serde_json::Value>,
) -> String {
    let mut chain = json!({ "filters": [hcm("up")] });
    if let Some(common) = server {
        chain["transport_socket"] = json!({ "name": "tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true, "common_tls_context": common } });
    }
    let mut cluster = json!({
        "name": "up", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": { "cluster_name": "up", "endpoints": [{ "lb_endpoints": [
            { "endpoint": { "address": { "socket_address": {
                "address": "127.0.0.1", "port_value": upstream.port() } } } } ]}]},
    });
    if let Some(common) = client {
        cluster["transport_socket"] = json!({ "name": "tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "backend.test", "common_tls_context": common } });
    }
    json!({
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
        "static_resources": {
            "listeners": [{ "name": "l", "address": { "socket_address": {
                "address": "127.0.0.1", "port_value": port } }, "filter_chains": [chain] }],
            "clusters": [cluster],
        }
    })
    .to_string()
}

async fn latencies(url: &str, n: usize) -> (Duration, Duration) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = client
            .get(url.parse().expect("url"))
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
        let _ = http_body_util::BodyExt::collect(r.into_body()).await;
        v.push(t.elapsed());
    }
    v.sort();
    (v[n / 2], v[n * 99 / 100])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn mtls_handshake_rate_and_hop_latency() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("bench CA");
    let ca_file = ca.write(dir.path(), "ca");
    let app = Echo::start("app").await;
    let server_cert = ca.issue(&Leaf::new(&["backend.test"], &[]));
    let client_cert = ca.issue(&Leaf::new(&[], &[FRONTEND]));
    let server_common = json!({
        "tls_certificates": [files(dir.path(), "server", &server_cert)],
        "validation_context": { "trusted_ca": { "filename": ca_file },
            "match_typed_subject_alt_names": [{ "san_type": "URI", "matcher": { "exact": FRONTEND } }] },
    });
    let client_common = json!({
        "tls_certificates": [files(dir.path(), "client", &client_cert)],
        "validation_context": { "trusted_ca": { "filename": ca_file } },
    });

    // mTLS pair and plaintext pair, same shape.
    let (b_tls, a_tls, b_plain, a_plain) = (free_port(), free_port(), free_port(), free_port());
    let _b1 = ProxyProcess::start(&proxy(b_tls, app.addr, Some(server_common), None)).await;
    let _a1 = ProxyProcess::start(&proxy(a_tls, loopback(b_tls), None, Some(client_common))).await;
    let _b2 = ProxyProcess::start(&proxy(b_plain, app.addr, None, None)).await;
    let _a2 = ProxyProcess::start(&proxy(a_plain, loopback(b_plain), None, None)).await;

    // Handshakes: a new mTLS connection (full handshake, no resumption) and
    // one request on it, 4 at a time.
    let cfg = client_config(&ca.pem, Some(&client_cert), &["http/1.1"]);
    let n = 400;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..n / 4 {
                let r = https_get(loopback(b_tls), "backend.test", cfg.clone(), "/")
                    .await
                    .expect("mtls");
                assert_eq!(r.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "mTLS: {n} new connections (handshake + 1 request) in {secs:.2}s = {:.0}/s",
        n as f64 / secs
    );

    // Warm both paths, then measure keep-alive request latency through A→B.
    let _ = latencies(&format!("http://127.0.0.1:{a_tls}/"), 50).await;
    let _ = latencies(&format!("http://127.0.0.1:{a_plain}/"), 50).await;
    let (p50_tls, p99_tls) = latencies(&format!("http://127.0.0.1:{a_tls}/"), 2000).await;
    let (p50_plain, p99_plain) = latencies(&format!("http://127.0.0.1:{a_plain}/"), 2000).await;
    eprintln!("A→B plaintext hop: p50 {p50_plain:?} p99 {p99_plain:?}");
    eprintln!("A→B mTLS hop:      p50 {p50_tls:?} p99 {p99_tls:?}");
}
