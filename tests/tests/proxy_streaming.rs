//! Bodies stream through the proxy with backpressure, never buffered whole.

use std::time::Duration;

use bytes::Bytes;
use futures::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use trellis_tests::config::{cluster, http_proxy};
use trellis_tests::free_port;
use trellis_tests::process::ProxyProcess;
use trellis_tests::upstream::Echo;

const CATCH_ALL: &str = r#"          - name: all
            domains: ["*"]
            routes:
            - match: { prefix: "/" }
              route: { cluster: app, timeout: 0s }
"#;

/// Peak resident set of a process, from /proc (kB → bytes).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

#[tokio::test]
async fn one_gib_upload_streams_in_bounded_memory() {
    const CHUNK: usize = 256 * 1024;
    const TOTAL: u64 = 1 << 30;
    let app = Echo::start("app").await;
    let port = free_port();
    let p = ProxyProcess::start(&http_proxy(
        port,
        CATCH_ALL,
        &[cluster("app", &[app.addr], "")],
        "",
    ))
    .await;
    let pid = p.child.id().expect("proxy pid");

    let chunk = Bytes::from(vec![0x5a; CHUNK]);
    let frames = stream::iter(
        (0..TOTAL / CHUNK as u64).map(move |_| Ok::<_, std::io::Error>(Frame::data(chunk.clone()))),
    );
    let body = StreamBody::new(frames);
    let client: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("http://127.0.0.1:{port}/discard"))
        .body(body)
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(120), client.request(req))
        .await
        .expect("upload finished in time")
        .expect("upload answered");
    assert_eq!(resp.status(), 200);
    let got = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(String::from_utf8_lossy(&got), TOTAL.to_string());
    let rss = peak_rss(pid);
    assert!(rss < 64 * 1024 * 1024, "proxy peak RSS {} MiB", rss >> 20);
}

#[tokio::test]
async fn stalled_response_body_is_cut_by_the_route_idle_timeout() {
    let app = Echo::start("app").await;
    let port = free_port();
    let vhosts = r#"          - name: all
            domains: ["*"]
            routes:
            - match: { prefix: "/" }
              route: { cluster: app, idle_timeout: 0.3s }
"#;
    let _p = ProxyProcess::start(&http_proxy(
        port,
        vhosts,
        &[cluster("app", &[app.addr], "")],
        "",
    ))
    .await;
    let client: Client<_, http_body_util::Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let resp = client
        .get(
            format!("http://127.0.0.1:{port}/stall")
                .parse()
                .expect("uri"),
        )
        .await
        .expect("headers arrive");
    assert_eq!(resp.status(), 200);
    let started = std::time::Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .expect("the proxy ends the stalled stream");
    assert!(
        body.is_err(),
        "a stalled body must end in an error, not a clean end"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
}
