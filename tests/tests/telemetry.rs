//! Telemetry end to end: two trellis proxies in a row on loopback, an echo
//! upstream behind them. The metrics of both hops must agree with the
//! traffic sent and pass `promtool check metrics`; access log lines must
//! match their formats exactly; trace headers must survive both hops; an
//! access log that cannot be written must not fail requests; a rotated log
//! is reopened on SIGUSR1 and `POST /reopen_logs`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::Method;
use trellis_tests::config::{cluster, http_proxy, indent};
use trellis_tests::metrics::{promtool_findings, sample};
use trellis_tests::process::ProxyProcess;
use trellis_tests::upstream::Echo;
use trellis_tests::{client, eventually, free_port, loopback, within};

const LIMIT: Duration = Duration::from_secs(90);

fn file_log(path: &Path, log_format: &str) -> String {
    format!(
        r#"- name: envoy.access_loggers.file
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: {}
{}"#,
        path.display(),
        indent(log_format, 4)
    )
}

fn access_logs(loggers: &[String]) -> String {
    indent(
        &format!("access_log:\n{}", indent(&loggers.concat(), 0)),
        10,
    )
}

/// Hop A: retries 5xx twice on `/status/`, sends everything to hop B.
fn hop_a(port: u16, b: SocketAddr, hcm_extra: &str) -> String {
    let vhosts = r#"- name: all
  domains: ["*"]
  routes:
  - match: { prefix: "/status/" }
    route:
      cluster: hop_b
      retry_policy: { retry_on: 5xx, num_retries: 2 }
  - match: { prefix: "/" }
    route: { cluster: hop_b }
"#;
    http_proxy(
        port,
        &indent(vhosts, 10),
        &[cluster("hop_b", &[b], "")],
        hcm_extra,
    )
}

/// Hop B: everything to the echo upstream.
fn hop_b(port: u16, echo: SocketAddr, hcm_extra: &str) -> String {
    let vhosts = r#"- name: all
  domains: ["*"]
  routes:
  - match: { prefix: "/" }
    name: to_echo
    route: { cluster: echo }
"#;
    http_proxy(
        port,
        &indent(vhosts, 10),
        &[cluster("echo", &[echo], "")],
        hcm_extra,
    )
}

async fn lines(path: &Path, n: usize) -> Vec<String> {
    eventually(Duration::from_secs(10), "access log lines", || async {
        let text = std::fs::read_to_string(path).ok()?;
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        (lines.len() >= n).then_some(lines)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hops_count_traffic_log_it_and_keep_trace_headers() {
    within(LIMIT, "two-hop telemetry", async {
        let echo = Echo::start("echo").await;
        let logs = tempfile::tempdir().expect("temp dir");
        let a_log = logs.path().join("a.log");
        let b_text = logs.path().join("b.log");
        let b_json = logs.path().join("b.json");
        let (pa, pb) = (free_port(), free_port());
        let b = ProxyProcess::start(&hop_b(
            pb,
            echo.addr,
            &access_logs(&[
                file_log(
                    &b_text,
                    "log_format:\n  text_format_source:\n    inline_string: \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER% %ROUTE_NAME% %REQ(X-REQUEST-ID)% %BYTES_SENT% %PROTOCOL% %REQ(X-MISSING):3%|%UPSTREAM_HOST%|%UPSTREAM_LOCAL_ADDRESS%\\n\"\n",
                ),
                file_log(
                    &b_json,
                    "log_format:\n  json_format:\n    code: \"%RESPONSE_CODE%\"\n    path: \"%REQ(:PATH)%\"\n    missing: \"%REQ(X-MISSING)%\"\n    peer: \"%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%\"\n    fixed: 7\n",
                ),
            ]),
        ))
        .await;
        let a = ProxyProcess::start(&hop_a(
            pa,
            loopback(pb),
            &access_logs(&[file_log(&a_log, "")]),
        ))
        .await;
        let url = |p: &str| format!("http://127.0.0.1:{pa}{p}");

        let trace_headers = [
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "1"),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
            ("x-amzn-trace-id", "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1"),
            ("x-request-id", "req-1"),
            ("user-agent", "telemetry-test"),
        ];
        let first = client::request(Method::GET, &url("/hello"), &trace_headers, "")
            .await
            .expect("request through two hops");
        assert_eq!(first.status, 200);
        let seen = first.echoed();
        for (name, value) in trace_headers {
            let got = seen["headers"][name].as_str().unwrap_or_default();
            match name {
                // Each hop may start a child span: the trace id must survive.
                "traceparent" => assert!(got.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{name}: {got}"),
                "b3" => assert!(got.starts_with("80f198ee56343ba864fe8b2a57d3eff7-"), "{name}: {got}"),
                "x-b3-spanid" => assert_eq!(got.len(), 16, "{name}: {got}"),
                "x-amzn-trace-id" => assert!(got.contains("Root=1-5759e988-bd862e3fe1be46a994272793"), "{name}: {got}"),
                _ => assert_eq!(got, value, "{name} survives two hops"),
            }
        }

        for _ in 0..9 {
            let r = client::get(&url("/")).await.expect("request");
            assert_eq!(r.status, 200);
        }
        for _ in 0..2 {
            let r = client::get(&url("/status/503")).await.expect("request");
            assert_eq!(r.status, 503);
        }
        let r = client::get(&url("/status/404")).await.expect("request");
        assert_eq!(r.status, 404);

        // 10 + 1 + 2 requests at A; 2 of them tried three times. As in
        // Envoy, codes (and times) count the answers returned, not the
        // retried ones.
        let want_a = [
            ("http.ingress_http.downstream_rq_total", 13),
            ("http.ingress_http.downstream_rq_2xx", 10),
            ("http.ingress_http.downstream_rq_4xx", 1),
            ("http.ingress_http.downstream_rq_5xx", 2),
            ("cluster.hop_b.upstream_rq_total", 17),
            ("cluster.hop_b.upstream_rq_200", 10),
            ("cluster.hop_b.upstream_rq_503", 2),
            ("cluster.hop_b.upstream_rq_retry", 4),
            ("cluster.hop_b.upstream_rq_retry_limit_exceeded", 2),
            ("cluster.hop_b.membership_total", 1),
        ];
        let want_b = [
            ("http.ingress_http.downstream_rq_total", 17),
            ("http.ingress_http.downstream_rq_5xx", 6),
            ("cluster.echo.upstream_rq_total", 17),
            ("cluster.echo.upstream_rq_2xx", 10),
            ("cluster.echo.upstream_rq_503", 6),
            ("cluster.echo.upstream_rq_404", 1),
        ];
        for (proxy, want) in [(&a, &want_a[..]), (&b, &want_b[..])] {
            for (name, value) in want {
                assert_eq!(proxy.stat(name).await, *value, "{name}");
            }
        }
        // The test client opens one connection per request.
        let listener_cx = format!("listener.127.0.0.1_{pa}.downstream_cx_total");
        assert_eq!(a.stat(&listener_cx).await, 13, "{listener_cx}");
        assert_eq!(echo.count(), 17);

        for (proxy, hop, cluster, upstream_count) in [(&a, "A", "hop_b", 13.0), (&b, "B", "echo", 17.0)] {
            let prom = proxy.admin_get("/stats/prometheus").await.body_text();
            // HELP lines are trellis's addition: Envoy has none.
            if !trellis_tests::process::testing_envoy() {
                let findings = promtool_findings(&prom);
                assert!(findings.is_empty(), "hop {hop}: promtool: {findings:#?}");
                for line in prom.lines().filter(|l| l.starts_with("# TYPE")) {
                    let family = line.split(' ').nth(2).unwrap_or_default();
                    assert!(
                        prom.contains(&format!("# HELP {family} ")),
                        "hop {hop}: no HELP for {family}"
                    );
                }
                assert!(!prom.contains("without a description"), "hop {hop}: placeholder HELP");
            }
            assert_eq!(
                sample(&prom, &format!("envoy_cluster_upstream_rq_time_count{{envoy_cluster_name=\"{cluster}\"}}")),
                Some(upstream_count),
                "hop {hop}"
            );
            assert_eq!(
                sample(&prom, &format!("envoy_cluster_upstream_rq_time_bucket{{envoy_cluster_name=\"{cluster}\",le=\"+Inf\"}}")),
                Some(upstream_count),
            );
            let json: serde_json::Value =
                serde_json::from_str(&proxy.admin_get("/stats?format=json&filter=downstream_rq_time").await.body_text())
                    .expect("stats JSON");
            let histograms = json["stats"]
                .as_array()
                .and_then(|a| a.iter().find(|s| s.get("histograms").is_some()))
                .unwrap_or_else(|| panic!("no histograms in {json}"));
            let computed = &histograms["histograms"]["computed_quantiles"][0];
            assert_eq!(computed["name"], "http.ingress_http.downstream_rq_time", "{json}");
        }

        // Hop B's custom text format, byte for byte.
        let b_lines = lines(&b_text, 17).await;
        let echo_addr = echo.addr;
        let first_b = &b_lines[0];
        let id = seen["headers"]["x-request-id"].as_str().unwrap_or_default();
        let expect_prefix = format!("GET /hello 200 - echo to_echo {id} ");
        assert!(first_b.starts_with(&expect_prefix), "{first_b}");
        let (head, local) = first_b.rsplit_once('|').expect("the local address");
        assert!(head.ends_with(&format!(" HTTP/1.1 -|{echo_addr}")), "{first_b}");
        // The proxy's own end of its connection to the upstream.
        let local: SocketAddr = local.parse().unwrap_or_else(|e| panic!("{local}: {e}"));
        assert_eq!(local.ip(), echo_addr.ip());
        assert!(local.port() != 0 && local.port() != echo_addr.port(), "{first_b}");
        let sent: usize = first_b[expect_prefix.len()..]
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("bytes sent");
        assert_eq!(sent, first.body.len(), "%BYTES_SENT% is the body B sent");
        assert!(b_lines.iter().any(|l| l.starts_with("GET /status/503 503 - echo ")));

        let json_lines = lines(&b_json, 17).await;
        let j: serde_json::Value = serde_json::from_str(&json_lines[0]).expect("a JSON line");
        assert_eq!(
            j,
            serde_json::json!({"code": 200, "path": "/hello", "missing": null, "peer": "127.0.0.1", "fixed": 7.0})
        );

        // Hop A's line in Envoy's default format.
        let a_lines = lines(&a_log, 13).await;
        let re = regex::Regex::new(&format!(
            r#"^\[\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{3}}Z\] "GET /hello HTTP/1\.1" 200 - 0 {len} \d+ \d+ "-" "telemetry-test" "req-1" "127\.0\.0\.1:{pa}" "127\.0\.0\.1:{pb}"$"#,
            len = first.body.len()
        ))
        .expect("regex");
        assert!(re.is_match(&a_lines[0]), "{}", a_lines[0]);
        assert!(a_lines.iter().any(|l| l.contains("\"GET /status/503 HTTP/1.1\" 503 URX ")), "{a_lines:#?}");
    })
    .await;
}

/// `%CONNECTION_ID%` names the downstream connection: the requests of one
/// keep-alive connection share it, another connection has its own.
#[tokio::test]
async fn connection_id_is_one_per_downstream_connection() {
    within(LIMIT, "connection id", async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let echo = Echo::start("echo").await;
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("ids.log");
        let port = free_port();
        let _p = ProxyProcess::start(&hop_b(
            port,
            echo.addr,
            &access_logs(&[file_log(
                &log,
                "log_format:\n  text_format_source:\n    inline_string: \"%REQ(:PATH)% %CONNECTION_ID%\\n\"\n",
            )]),
        ))
        .await;
        // Two requests on one connection (the second closes it), then one on
        // another connection.
        for paths in [&["/a", "/b"][..], &["/c"]] {
            let mut s = tokio::net::TcpStream::connect(loopback(port))
                .await
                .expect("connect");
            for (i, path) in paths.iter().enumerate() {
                let close = if i + 1 == paths.len() { "connection: close\r\n" } else { "" };
                let req = format!("GET {path} HTTP/1.1\r\nhost: a\r\n{close}\r\n");
                s.write_all(req.as_bytes()).await.expect("write");
            }
            let mut answers = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answers))
                .await
                .expect("answered and closed")
                .expect("read");
            let text = String::from_utf8_lossy(&answers);
            assert_eq!(text.matches("HTTP/1.1 200").count(), paths.len(), "{text}");
        }
        // Envoy writes its access logs out every 10 s.
        let lines = eventually(Duration::from_secs(15), "three log lines", || async {
            let text = std::fs::read_to_string(&log).ok()?;
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            (lines.len() == 3).then_some(lines)
        })
        .await;
        let id = |path: &str| -> u64 {
            let line = lines
                .iter()
                .find(|l| l.starts_with(&format!("{path} ")))
                .unwrap_or_else(|| panic!("no line for {path}: {lines:?}"));
            line[path.len() + 1..]
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {line}"))
        };
        assert_eq!(id("/a"), id("/b"), "{lines:?}");
        assert_ne!(id("/a"), id("/c"), "{lines:?}");
    })
    .await;
}

/// An access log whose writes fail (`/dev/full`) costs lines, not requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_access_log_does_not_fail_requests() {
    within(LIMIT, "failing access log", async {
        let echo = Echo::start("echo").await;
        let port = free_port();
        let p = ProxyProcess::start(&hop_b(
            port,
            echo.addr,
            &access_logs(&[file_log(Path::new("/dev/full"), "")]),
        ))
        .await;
        for _ in 0..50 {
            let r = client::get(&format!("http://127.0.0.1:{port}/"))
                .await
                .expect("request");
            assert_eq!(r.status, 200);
        }
        let failed = eventually(
            Duration::from_secs(10),
            "write failures counted",
            || async {
                let n = p.stat("access_logs.file.write_failed").await;
                (n > 0).then_some(n)
            },
        )
        .await;
        assert!(failed > 0);
    })
    .await;
}

/// An unknown operator is a config error naming the field.
#[tokio::test]
async fn unknown_operators_are_config_errors() {
    let echo = Echo::start("echo").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = hop_b(
        free_port(),
        echo.addr,
        &access_logs(&[file_log(
            &dir.path().join("x.log"),
            "log_format:\n  text_format_source:\n    inline_string: \"%NOT_AN_OPERATOR%\"\n",
        )]),
    );
    let path = dir.path().join("bootstrap.yaml");
    std::fs::write(&path, cfg).expect("write bootstrap");
    let path = path.display().to_string();
    let (code, stderr) = trellis_tests::process::run_to_exit(
        &trellis_tests::process::workspace_bin("trellis-proxy"),
        &["--mode", "validate", "-c", &path],
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("access_log[0]"), "{stderr}");
    assert!(stderr.contains("NOT_AN_OPERATOR"), "{stderr}");
}

/// Log rotation: once the file is moved away, SIGUSR1 (or `POST
/// /reopen_logs`) makes the proxy write to a new file at the configured
/// path; no line is lost or written twice. Envoy does the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_and_reopen_logs_start_a_new_file_after_rotation() {
    within(LIMIT, "access log rotation", async {
        let echo = Echo::start("echo").await;
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("access.log");
        let port = free_port();
        let p = ProxyProcess::start(&hop_b(
            port,
            echo.addr,
            &access_logs(&[file_log(
                &log,
                "log_format:\n  text_format_source:\n    inline_string: \"%REQ(:PATH)%\\n\"\n",
            )]),
        ))
        .await;
        let mut sent = 0;
        let mut get = || {
            sent += 1;
            let url = format!("http://127.0.0.1:{port}/r{sent}");
            async move {
                let r = client::get(&url).await.expect("request");
                assert_eq!(r.status, 200);
            }
        };
        let read = |path: &Path| -> Vec<String> {
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect()
        };
        let mut rotated = Vec::new();
        for (round, how) in ["SIGUSR1", "POST /reopen_logs"].iter().enumerate() {
            get().await;
            lines(&log, 1).await;
            let old = dir.path().join(format!("access.log.{round}"));
            std::fs::rename(&log, &old).expect("rotate");
            match *how {
                "SIGUSR1" => p.signal(libc::SIGUSR1),
                _ => assert_eq!(p.admin_post("/reopen_logs").await.status, 200),
            }
            // The reopen is asynchronous: requests go on until one lands in
            // the new file.
            eventually(
                Duration::from_secs(10),
                &format!("a new file after {how}"),
                || {
                    let fut = get();
                    let log = log.clone();
                    async move {
                        fut.await;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        (!read(&log).is_empty()).then_some(())
                    }
                },
            )
            .await;
            rotated.push(old);
        }
        // Every request logged exactly once, in order across the files.
        let expected: Vec<String> = (1..=sent).map(|n| format!("/r{n}")).collect();
        let all = eventually(Duration::from_secs(10), "every line written", || async {
            let all: Vec<String> = rotated
                .iter()
                .flat_map(|f| read(f))
                .chain(read(&log))
                .collect();
            (all.len() >= expected.len()).then_some(all)
        })
        .await;
        assert_eq!(all, expected);
        for f in &rotated {
            assert!(!read(f).is_empty(), "{} kept its lines", f.display());
        }
    })
    .await;
}

/// Every stat of `/stats` by name.
async fn all_stats(p: &ProxyProcess) -> std::collections::HashMap<String, i64> {
    p.admin_get("/stats")
        .await
        .body_text()
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(": ")?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Waits until the stats have the `expected` values; the panic shows them.
async fn stats_reach(p: &ProxyProcess, expected: &[(String, i64)], what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stats = all_stats(p).await;
        let seen: Vec<(String, i64)> = expected
            .iter()
            .map(|(k, _)| (k.clone(), stats.get(k).copied().unwrap_or(-1)))
            .collect();
        if seen == expected {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connection gauges and totals, on trellis-proxy and on stock Envoy: an
/// open keep-alive client connection is one active downstream connection
/// at the listener and at the connection manager, and its request opened
/// one pooled upstream connection; closing the client connection brings
/// the downstream gauges back to 0, keeps the totals, and leaves the
/// upstream connection in the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_gauges_and_totals_match_envoy() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    use trellis_tests::process::{require_envoy, workspace_bin};
    within(LIMIT, "connection gauges", async {
        let echo = Echo::start("echo").await;
        for bin in [workspace_bin("trellis-proxy"), require_envoy()] {
            let who = bin.display().to_string();
            let port = free_port();
            let p = ProxyProcess::start_with(&bin, &hop_b(port, echo.addr, ""), &[]).await;
            let listener = format!("listener.127.0.0.1_{port}");
            let expect = |open: i64| {
                vec![
                    ("http.ingress_http.downstream_cx_active".to_string(), open),
                    ("http.ingress_http.downstream_cx_total".to_string(), 1),
                    (format!("{listener}.downstream_cx_active"), open),
                    (format!("{listener}.downstream_cx_total"), 1),
                    ("cluster.echo.upstream_cx_active".to_string(), 1),
                    ("cluster.echo.upstream_cx_total".to_string(), 1),
                ]
            };
            let stream = tokio::net::TcpStream::connect(loopback(port))
                .await
                .expect("connect");
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            let conn = tokio::spawn(conn);
            for _ in 0..2 {
                let request = http::Request::get("/")
                    .header("host", "x")
                    .body(Empty::<bytes::Bytes>::new())
                    .expect("request");
                sender.ready().await.expect("connection ready");
                let r = sender.send_request(request).await.expect("response");
                assert_eq!(r.status(), 200, "{who}");
                r.into_body().collect().await.expect("body");
            }
            stats_reach(&p, &expect(1), &format!("{who}, connection open")).await;
            drop(sender);
            let _ = conn.await;
            stats_reach(&p, &expect(0), &format!("{who}, connection closed")).await;
        }
    })
    .await;
}
