//! Circuit breakers overflow as configured (503, `x-envoy-overloaded`, the
//! overflow counters), and attempt counts reach upstream and downstream.

mod resilience_common;

use std::time::Duration;

use resilience_common::{bootstrap, client, cluster, send, Seen, Up};
use trellis_tests::process::ProxyProcess;
use trellis_tests::{free_port, within};

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
        assert_eq!(p.stat("cluster.app.upstream_rq_pending_overflow").await, 4);
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
        // One on the connection, one pending (served after it), two refused.
        assert_eq!(count(&seen, 200), 2, "{seen:?}");
        assert_eq!(count(&seen, 503), 2, "{seen:?}");
        assert_eq!(p.stat("cluster.app.upstream_rq_pending_overflow").await, 2);
        assert!(p.stat("cluster.app.upstream_cx_overflow").await >= 3);
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
