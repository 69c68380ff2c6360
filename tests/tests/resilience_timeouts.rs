//! The five timeouts stay distinct, each with Envoy's status, response flag
//! and counter: connect (503 `UF`, `upstream_cx_connect_timeout`), route
//! (504 `UT`, `upstream_rq_timeout`), per try (504 `UT`,
//! `upstream_rq_per_try_timeout`), connection idle
//! (`downstream_cx_idle_timeout`) and stream idle (`SI`,
//! `downstream_rq_idle_timeout`). Run with `TRELLIS_TEST_PROXY=envoy` to
//! check the expectations against stock Envoy.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_tests::config::{cluster, http_proxy, indent};
use trellis_tests::process::ProxyProcess;
use trellis_tests::rss::RssWatch;
use trellis_tests::upstream::Echo;
use trellis_tests::{blackhole_address, client, eventually, free_port, within};

const LIMIT: Duration = Duration::from_secs(60);

/// `%RESPONSE_CODE% %RESPONSE_FLAGS%` per request, to `log`.
fn flags_log(log: &Path) -> String {
    indent(
        &format!(
            r#"access_log:
- name: envoy.access_loggers.file
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: {}
    log_format:
      text_format_source:
        inline_string: "%RESPONSE_CODE% %RESPONSE_FLAGS%\n"
"#,
            log.display()
        ),
        10,
    )
}

/// One route to cluster `app` with `route_extra` (YAML at the route action's
/// indent, e.g. `timeout: 1s`).
fn proxy(port: u16, app: &[SocketAddr], route_extra: &str, hcm_extra: &str) -> String {
    let vhosts = format!(
        r#"- name: all
  domains: ["*"]
  routes:
  - match: {{ prefix: "/" }}
    route:
      cluster: app
{}"#,
        indent(route_extra, 6)
    );
    http_proxy(
        port,
        &indent(&vhosts, 10),
        &[cluster("app", app, "")],
        hcm_extra,
    )
}

async fn logged(log: &Path) -> String {
    eventually(Duration::from_secs(10), "an access log line", || async {
        let text = std::fs::read_to_string(log).ok()?;
        let line = text.lines().next()?.to_string();
        Some(line)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_is_uf_and_counted_as_such() {
    within(LIMIT, "connect timeout", async {
        let (hole, _guard) = blackhole_address();
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("access.log");
        let port = free_port();
        let mut cfg = proxy(port, &[hole], "", &flags_log(&log));
        cfg = cfg.replace("connect_timeout: 1s", "connect_timeout: 0.25s");
        let p = ProxyProcess::start(&cfg).await;
        let r = client::get(&format!("http://127.0.0.1:{port}/"))
            .await
            .expect("an answer");
        assert_eq!(r.status, 503, "{}", r.body_text());
        assert!(
            r.body_text().contains("connection timeout"),
            "{}",
            r.body_text()
        );
        assert_eq!(logged(&log).await, "503 UF");
        assert_eq!(p.stat("cluster.app.upstream_cx_connect_timeout").await, 1);
        assert_eq!(p.stat("cluster.app.upstream_cx_connect_fail").await, 1);
        assert_eq!(p.stat("cluster.app.upstream_rq_timeout").await, 0);
        assert_eq!(p.stat("cluster.app.upstream_rq_503").await, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_connect_timeouts_are_each_counted() {
    within(LIMIT, "retried connect timeout", async {
        let (hole, _guard) = blackhole_address();
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("access.log");
        let port = free_port();
        let route = "retry_policy: { retry_on: connect-failure, num_retries: 1 }\n";
        let cfg = proxy(port, &[hole], route, &flags_log(&log))
            .replace("connect_timeout: 1s", "connect_timeout: 0.25s");
        let p = ProxyProcess::start(&cfg).await;
        let r = client::get(&format!("http://127.0.0.1:{port}/"))
            .await
            .expect("an answer");
        assert_eq!(r.status, 503, "{}", r.body_text());
        assert_eq!(logged(&log).await, "503 URX,UF");
        assert_eq!(p.stat("cluster.app.upstream_cx_connect_timeout").await, 2);
        assert_eq!(p.stat("cluster.app.upstream_rq_retry").await, 1);
        assert_eq!(p.stat("cluster.app.upstream_rq_503").await, 1);
        assert_eq!(
            p.stat("cluster.app.upstream_rq_retry_limit_exceeded").await,
            1
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_is_ut_and_upstream_rq_timeout() {
    within(LIMIT, "route timeout", async {
        let echo = Echo::start("slow").await;
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("access.log");
        let port = free_port();
        let p = ProxyProcess::start(&proxy(
            port,
            &[echo.addr],
            "timeout: 0.25s\n",
            &flags_log(&log),
        ))
        .await;
        let r = client::get(&format!("http://127.0.0.1:{port}/delay/3000"))
            .await
            .expect("an answer");
        assert_eq!(r.status, 504);
        assert_eq!(r.body_text(), "upstream request timeout");
        assert_eq!(logged(&log).await, "504 UT");
        assert_eq!(p.stat("cluster.app.upstream_rq_timeout").await, 1);
        assert_eq!(p.stat("cluster.app.upstream_rq_per_try_timeout").await, 0);
        assert_eq!(p.stat("http.ingress_http.downstream_rq_5xx").await, 1);
        assert_eq!(p.stat("cluster.app.upstream_rq_504").await, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeouts_are_counted_per_try_and_retried() {
    within(LIMIT, "per-try timeout", async {
        let echo = Echo::start("slow").await;
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("access.log");
        let port = free_port();
        let route = "timeout: 10s\nretry_policy:\n  retry_on: 5xx\n  num_retries: 1\n  per_try_timeout: 0.25s\n";
        let p = ProxyProcess::start(&proxy(port, &[echo.addr], route, &flags_log(&log))).await;
        let r = client::get(&format!("http://127.0.0.1:{port}/delay/3000"))
            .await
            .expect("an answer");
        assert_eq!(r.status, 504);
        // Envoy names the exhausted retries first.
        assert_eq!(logged(&log).await, "504 URX,UT");
        assert_eq!(p.stat("cluster.app.upstream_rq_per_try_timeout").await, 2);
        assert_eq!(p.stat("cluster.app.upstream_rq_retry").await, 1);
        assert_eq!(p.stat("cluster.app.upstream_rq_timeout").await, 0);
        assert_eq!(p.stat("cluster.app.upstream_rq_504").await, 1);
        assert_eq!(echo.count(), 2, "two tries reached the upstream");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_counted() {
    within(LIMIT, "connection idle timeout", async {
        let echo = Echo::start("app").await;
        let port = free_port();
        let hcm = indent("common_http_protocol_options: { idle_timeout: 0.3s }\n", 10);
        let p = ProxyProcess::start(&proxy(port, &[echo.addr], "", &hcm)).await;
        let watch = RssWatch::start(p.child.id().expect("proxy running"));
        // 20 clients that ask once, then hold their connections idle.
        let idle = (0..20).map(|_| async move {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .expect("write");
            // The answer, then (once idle) the close: read to end of stream.
            let mut got = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
                .await
                .expect("the proxy closes the idle connection")
                .expect("read");
            got
        });
        let url = format!("http://127.0.0.1:{port}/");
        let (replies, other) = tokio::join!(futures::future::join_all(idle), client::get(&url));
        watch.finish("20 idle connections");
        assert_eq!(other.expect("another client is served").status, 200);
        for got in replies {
            assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
        }
        // The other client closes its own connection after its answer.
        assert_eq!(
            p.stat("http.ingress_http.downstream_cx_idle_timeout").await,
            20
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_idle_timeout_before_headers_is_si() {
    within(LIMIT, "stream idle timeout", async {
        let echo = Echo::start("slow").await;
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("access.log");
        let port = free_port();
        let hcm = format!(
            "{}{}",
            indent("stream_idle_timeout: 0.25s\n", 10),
            flags_log(&log)
        );
        let p = ProxyProcess::start(&proxy(port, &[echo.addr], "", &hcm)).await;
        let r = client::get(&format!("http://127.0.0.1:{port}/delay/3000"))
            .await
            .expect("an answer");
        assert_eq!(r.status, 504, "{}", r.body_text());
        assert_eq!(r.body_text(), "stream timeout");
        assert_eq!(logged(&log).await, "504 SI");
        assert_eq!(
            p.stat("http.ingress_http.downstream_rq_idle_timeout").await,
            1
        );
        assert_eq!(p.stat("cluster.app.upstream_rq_timeout").await, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_idle_timeout_cuts_a_stalled_body_and_counts_it() {
    within(LIMIT, "route idle timeout after headers", async {
        let echo = Echo::start("stalling").await;
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("access.log");
        let port = free_port();
        let p = ProxyProcess::start(&proxy(
            port,
            &[echo.addr],
            "idle_timeout: 0.25s\n",
            &flags_log(&log),
        ))
        .await;
        // The headers come, the body never ends: the read fails.
        let r = client::get(&format!("http://127.0.0.1:{port}/stall")).await;
        assert!(r.is_err(), "a stalled body is cut: {r:?}");
        assert_eq!(logged(&log).await, "200 SI");
        assert_eq!(
            p.stat("http.ingress_http.downstream_rq_idle_timeout").await,
            1
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_idle_timeout_while_the_request_body_stalls_is_408() {
    within(LIMIT, "stream idle timeout mid-request", async {
        let echo = Echo::start("app").await;
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("access.log");
        let port = free_port();
        let hcm = format!(
            "{}{}",
            indent("stream_idle_timeout: 0.25s\n", 10),
            flags_log(&log)
        );
        let p = ProxyProcess::start(&proxy(port, &[echo.addr], "", &hcm)).await;
        let watch = RssWatch::start(p.child.id().expect("proxy running"));
        // 20 clients: three of the ten promised bytes, then silence.
        let stalled = (0..20).map(|_| {
            client::raw(
                trellis_tests::loopback(port),
                b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc",
                Duration::from_secs(5),
            )
        });
        let url = format!("http://127.0.0.1:{port}/");
        let (answers, other) = tokio::join!(futures::future::join_all(stalled), client::get(&url));
        watch.finish("20 stalled request bodies");
        assert_eq!(other.expect("another client is served").status, 200);
        for answer in answers {
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
            assert!(answer.ends_with("stream timeout"), "{answer}");
        }
        eventually(
            Duration::from_secs(10),
            "20 access log lines 408 SI",
            || async {
                let text = std::fs::read_to_string(&log).ok()?;
                (text.lines().filter(|l| *l == "408 SI").count() == 20).then_some(())
            },
        )
        .await;
        assert_eq!(
            p.stat("http.ingress_http.downstream_rq_idle_timeout").await,
            20
        );
    })
    .await;
}
