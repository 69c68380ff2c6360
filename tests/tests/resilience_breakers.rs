//! Circuit breakers overflow as configured (503, `x-envoy-overloaded`, the
//! overflow counters), and attempt counts reach upstream and downstream.

mod resilience_common;

use std::time::Duration;

use resilience_common::{bootstrap, bootstrap_logged, client, cluster, log_lines, send, Seen, Up};
use trellis_tests::process::ProxyProcess;
use trellis_tests::{eventually, free_port, within};

fn vhosts(retry: &str) -> String {
    format!(
        r#"          - name: all
            domains: ["*"]
            include_request_attempt_count: true
            include_attempt_count_in_response: true
            routes:
            - match: {{ prefix: "/" }}
              route:
                cluster: app
{retry}"#
    )
}

async fn burst(url: &str, n: usize) -> Vec<Seen> {
    let hs: Vec<_> = (0..n)
        .map(|_| {
            let url = url.to_string();
            tokio::spawn(async move { send(&client(), &url, &[]).await })
        })
        .collect();
    let mut out = Vec::new();
    for h in hs {
        out.push(h.await.expect("request"));
    }
    out
}

fn count(seen: &[Seen], status: u16) -> usize {
    seen.iter().filter(|s| s.status == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_overflows_with_503_uo() {
    within(Duration::from_secs(30), "max_requests", async {
        let a = Up::start("a").await;
        a.set_delay(500);
        let port = free_port();
        let extra = "    circuit_breakers:\n      thresholds:\n      - max_requests: 2\n";
        let p = ProxyProcess::start(&bootstrap(
            port,
            &vhosts(""),
            &[cluster("app", &[&a], extra)],
            "",
        ))
        .await;
        let seen = burst(&format!("http://127.0.0.1:{port}/"), 6).await;
        assert_eq!(count(&seen, 200), 2, "{seen:?}");
        assert_eq!(count(&seen, 503), 4, "{seen:?}");
        let over = seen.iter().find(|s| s.status == 503).expect("an overflow");
        assert_eq!(
            over.headers.get("x-envoy-overloaded").map(|v| v.as_bytes()),
            Some(&b"true"[..])
        );
        // Envoy 1.40 counts `max_requests` refusals here, not as pending.
        assert_eq!(p.stat("cluster.app.upstream_rq_active_overflow").await, 4);
        assert_eq!(p.stat("cluster.app.upstream_rq_pending_overflow").await, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_queues_up_to_max_pending_then_overflows() {
    within(Duration::from_secs(30), "max_connections", async {
        let a = Up::start("a").await;
        a.set_delay(400);
        let port = free_port();
        let extra = "    circuit_breakers:\n      thresholds:\n      - max_connections: 1\n        max_pending_requests: 1\n";
        let p = ProxyProcess::start(&bootstrap(
            port,
            &vhosts(""),
            &[cluster("app", &[&a], extra)],
            "",
        ))
        .await;
        let seen = burst(&format!("http://127.0.0.1:{port}/"), 4).await;
        // A request without a ready connection is pending, the first one
        // too while it connects (Envoy 1.40 answers 1 × 200, 3 × 503 here);
        // once it is connected one more may wait for it and be served.
        let (ok, refused) = (count(&seen, 200), count(&seen, 503));
        assert!(ok == 1 || ok == 2, "{seen:?}");
        assert_eq!(ok + refused, 4, "{seen:?}");
        let over = p.stat("cluster.app.upstream_rq_pending_overflow").await;
        assert_eq!(over as usize, refused);
        assert_eq!(p.stat("cluster.app.upstream_cx_total").await, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_retries_overflow_stops_retrying_and_attempts_are_counted() {
    within(Duration::from_secs(30), "max_retries", async {
        let a = Up::start("a").await;
        let port = free_port();
        let extra = "    circuit_breakers:\n      thresholds:\n      - max_retries: 1\n";
        let retry = r#"                retry_policy:
                  retry_on: 5xx
                  num_retries: 2
                  retry_back_off: { base_interval: 0.2s, max_interval: 0.2s }
"#;
        let p = ProxyProcess::start(&bootstrap(
            port,
            &vhosts(retry),
            &[cluster("app", &[&a], extra)],
            "",
        ))
        .await;
        // Alone, a failing request is tried three times and says so.
        let one = send(&client(), &format!("http://127.0.0.1:{port}/fail"), &[]).await;
        assert_eq!(one.status, 503);
        assert_eq!(
            one.headers
                .get("x-envoy-attempt-count")
                .map(|v| v.as_bytes()),
            Some(&b"3"[..])
        );
        assert_eq!(
            one.headers
                .get("x-seen-attempt-count")
                .map(|v| v.as_bytes()),
            Some(&b"3"[..])
        );
        // Four at once: only one retry may be outstanding.
        let seen = burst(&format!("http://127.0.0.1:{port}/fail"), 4).await;
        assert_eq!(count(&seen, 503), 4);
        assert!(p.stat("cluster.app.upstream_rq_retry_overflow").await >= 3);
        let ok = send(&client(), &format!("http://127.0.0.1:{port}/ok"), &[]).await;
        assert_eq!(
            ok.headers
                .get("x-envoy-attempt-count")
                .map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
    })
    .await;
}

/// Ten requests fail at once, each allowed one retry: the retry budget, not
/// `max_retries`, decides how many retries may be outstanding.
async fn retries_allowed_by_budget(budget: &str) -> (i64, i64) {
    let a = Up::start("a").await;
    a.set_delay(600);
    let port = free_port();
    let extra = format!(
        "    circuit_breakers:\n      thresholds:\n      - max_retries: 100\n        retry_budget: {budget}\n"
    );
    let retry = r#"                retry_policy:
                  retry_on: 5xx
                  num_retries: 1
                  retry_back_off: { base_interval: 0.01s, max_interval: 0.01s }
"#;
    let p = ProxyProcess::start(&bootstrap(
        port,
        &vhosts(retry),
        &[cluster("app", &[&a], &extra)],
        "",
    ))
    .await;
    let seen = burst(&format!("http://127.0.0.1:{port}/fail"), 10).await;
    assert_eq!(count(&seen, 503), 10, "{seen:?}");
    let retries = p.stat("cluster.app.upstream_rq_retry").await;
    let overflow = p.stat("cluster.app.upstream_rq_retry_overflow").await;
    assert_eq!(retries + overflow, 10, "each request retried or overflowed");
    assert_eq!(
        a.hits() as i64,
        10 + retries,
        "the upstream saw the retries"
    );
    (retries, overflow)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_percent_limits_retries_under_load() {
    within(Duration::from_secs(30), "retry budget percent", async {
        // 20% of about ten requests in flight: two retries, never ten.
        let (retries, overflow) = retries_allowed_by_budget(
            "{ budget_percent: { value: 20 }, min_retry_concurrency: 1 }",
        )
        .await;
        assert!((1..=3).contains(&retries), "{retries} retries");
        assert!(overflow >= 7, "{overflow} overflows");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_min_retry_concurrency_is_a_floor() {
    within(Duration::from_secs(30), "retry budget floor", async {
        // A zero budget still lets `min_retry_concurrency` retries through.
        let (retries, overflow) =
            retries_allowed_by_budget("{ budget_percent: { value: 0 }, min_retry_concurrency: 4 }")
                .await;
        assert_eq!((retries, overflow), (4, 6));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstream_max_requests_overflows_with_503_uo() {
    within(Duration::from_secs(30), "HTTP/2 max_requests", async {
        let echo = trellis_tests::upstream::Echo::start("h2").await;
        let port = free_port();
        let extra = format!(
            "{}    circuit_breakers:\n      thresholds:\n      - max_requests: 2\n",
            trellis_tests::config::H2_UPSTREAM
        );
        let p = ProxyProcess::start(&trellis_tests::config::http_proxy(
            port,
            &vhosts(""),
            &[trellis_tests::config::cluster("app", &[echo.addr], &extra)],
            "",
        ))
        .await;
        let seen = burst(&format!("http://127.0.0.1:{port}/delay/500"), 6).await;
        assert_eq!(count(&seen, 200), 2, "{seen:?}");
        assert_eq!(count(&seen, 503), 4, "{seen:?}");
        assert_eq!(p.stat("cluster.app.upstream_rq_active_overflow").await, 4);
        // Both admitted requests shared one HTTP/2 connection.
        assert_eq!(p.stat("cluster.app.upstream_cx_total").await, 1);
        assert_eq!(p.stat("cluster.app.upstream_cx_http2_total").await, 1);
    })
    .await;
}

/// Polls the gauge `cluster.app.circuit_breakers.default.NAME` until it is `want`.
async fn gauge_reaches(p: &ProxyProcess, name: &str, want: i64) {
    let stat = format!("cluster.app.circuit_breakers.default.{name}");
    eventually(
        Duration::from_secs(10),
        &format!("{stat} = {want}"),
        || async { (p.stat(&stat).await == want).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_shows_in_its_gauge_and_logs_uo() {
    within(Duration::from_secs(30), "breaker gauges", async {
        let a = Up::start("a").await;
        a.set_delay(1500);
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("access.log");
        let port = free_port();
        let extra = "    circuit_breakers:\n      thresholds:\n      - max_requests: 1\n";
        let p = ProxyProcess::start(&bootstrap_logged(
            port,
            &vhosts(""),
            &[cluster("app", &[&a], extra)],
            "",
            &log,
        ))
        .await;
        for g in [
            "cx_open",
            "cx_pool_open",
            "rq_open",
            "rq_pending_open",
            "rq_retry_open",
        ] {
            let text = p.admin_get("/stats").await.body_text();
            assert!(
                text.contains(&format!("cluster.app.circuit_breakers.default.{g}: 0")),
                "{g} listed and closed"
            );
        }
        let url = format!("http://127.0.0.1:{port}/");
        let first = tokio::spawn({
            let url = url.clone();
            async move { send(&client(), &url, &[]).await }
        });
        gauge_reaches(&p, "rq_open", 1).await;
        assert_eq!(send(&client(), &url, &[]).await.status, 503);
        assert_eq!(first.await.expect("first").status, 200);
        gauge_reaches(&p, "rq_open", 0).await;
        let mut lines = log_lines(&log, 2).await;
        lines.sort();
        assert_eq!(lines, ["200 -", "503 UO"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_connection_limit_counts_cx_overflow_and_opens_cx_open() {
    within(Duration::from_secs(30), "connection limit gauges", async {
        let a = Up::start("a").await;
        a.set_delay(300);
        let port = free_port();
        let extra = "    circuit_breakers:\n      thresholds:\n      - max_connections: 1\n        max_pending_requests: 10\n";
        let p = ProxyProcess::start(&bootstrap(
            port,
            &vhosts(""),
            &[cluster("app", &[&a], extra)],
            "",
        ))
        .await;
        let seen = burst(&format!("http://127.0.0.1:{port}/"), 3).await;
        assert_eq!(count(&seen, 200), 3, "pending requests wait their turn");
        assert_eq!(p.stat("cluster.app.upstream_cx_total").await, 1);
        assert!(p.stat("cluster.app.upstream_cx_overflow").await >= 1);
        // The kept-alive connection still fills the limit.
        gauge_reaches(&p, "cx_open", 1).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_waiting_for_a_connection_are_pending_and_overflow() {
    within(Duration::from_secs(30), "HTTP/2 pending limit", async {
        // A host that never answers the SYN: the first request waits for
        // its connection and holds the one pending place; the rest overflow.
        let (hole, _guard) = trellis_tests::blackhole_address();
        let port = free_port();
        let extra = format!(
            "{}    circuit_breakers:\n      thresholds:\n      - max_pending_requests: 1\n",
            trellis_tests::config::H2_UPSTREAM
        );
        let cfg = trellis_tests::config::http_proxy(
            port,
            &vhosts(""),
            &[trellis_tests::config::cluster("app", &[hole], &extra)],
            "",
        )
        .replace("connect_timeout: 1s", "connect_timeout: 0.5s");
        let p = ProxyProcess::start(&cfg).await;
        let seen = burst(&format!("http://127.0.0.1:{port}/"), 4).await;
        assert_eq!(count(&seen, 503), 4, "{seen:?}");
        let overloaded = seen
            .iter()
            .filter(|s| s.headers.contains_key("x-envoy-overloaded"))
            .count();
        assert_eq!(overloaded, 3, "{seen:?}");
        assert_eq!(p.stat("cluster.app.upstream_rq_pending_overflow").await, 3);
        assert_eq!(p.stat("cluster.app.upstream_cx_connect_timeout").await, 1);
    })
    .await;
}
