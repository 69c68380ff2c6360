//! Fault injection and local rate limiting give exactly the configured
//! shares, within binomial bounds.

mod resilience_common;

use std::time::{Duration, Instant};

use resilience_common::{bootstrap, client, cluster, send, Up};
use trellis_tests::process::ProxyProcess;
use trellis_tests::{free_port, within};

const FAULT: &str = r#"          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              abort:
                http_status: 503
                percentage: { numerator: 30, denominator: HUNDRED }
              delay:
                header_delay: {}
                percentage: { numerator: 100, denominator: HUNDRED }
"#;

const CATCH_ALL: &str = r#"          - name: all
            domains: ["*"]
            routes:
            - match: { prefix: "/" }
              route: { cluster: app }
"#;

/// Five standard deviations of a binomial count: a false failure is
/// about one in 3.5 million runs.
fn bounds(n: f64, p: f64) -> std::ops::RangeInclusive<usize> {
    let sd = (n * p * (1.0 - p)).sqrt();
    ((n * p - 5.0 * sd).floor() as usize)..=((n * p + 5.0 * sd).ceil() as usize)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_filter_aborts_the_configured_share_and_delays_by_header() {
    within(Duration::from_secs(60), "fault filter", async {
        let a = Up::start("a").await;
        let port = free_port();
        let p = ProxyProcess::start(&bootstrap(
            port,
            CATCH_ALL,
            &[cluster("app", &[&a], "")],
            FAULT,
        ))
        .await;
        let url = format!("http://127.0.0.1:{port}/");
        let c = client();
        let n = 2000;
        let mut aborted = 0;
        for _ in 0..n {
            let s = send(&c, &url, &[]).await;
            match s.status {
                503 => aborted += 1,
                200 => {}
                other => panic!("unexpected {other}"),
            }
        }
        let range = bounds(n as f64, 0.3);
        println!("fault abort: {aborted}/{n} (allowed {range:?})");
        assert!(range.contains(&aborted), "{aborted} not in {range:?}");
        assert_eq!(
            a.hits() as usize,
            n - aborted,
            "aborted requests never reach upstream"
        );
        assert_eq!(
            p.stat("http.ingress_http.fault.aborts_injected").await,
            aborted as i64
        );
        // The delay comes from the header, only when the request sends one.
        let started = Instant::now();
        let _ = send(
            &c,
            &url,
            &[
                ("x-envoy-fault-delay-request", "300"),
                ("x-envoy-fault-abort-request-percentage", "0"),
            ],
        )
        .await;
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(p.stat("http.ingress_http.fault.delays_injected").await, 1);
    })
    .await;
}

const RATELIMIT: &str = r#"          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: http_local_rate_limiter
"#;

const LIMITED_VHOSTS: &str = r#"          - name: all
            domains: ["*"]
            routes:
            - match: { prefix: "/limited" }
              route: { cluster: app }
              typed_per_filter_config:
                envoy.filters.http.local_ratelimit:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                  stat_prefix: per_route
                  token_bucket: { max_tokens: 10, tokens_per_fill: 10, fill_interval: 60s }
                  filter_enabled:
                    default_value: { numerator: 100, denominator: HUNDRED }
                  filter_enforced:
                    default_value: { numerator: 100, denominator: HUNDRED }
            - match: { prefix: "/" }
              route: { cluster: app }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_rate_limit_per_route_passes_exactly_the_bucket() {
    within(Duration::from_secs(60), "local rate limit", async {
        let a = Up::start("a").await;
        let port = free_port();
        let p = ProxyProcess::start(&bootstrap(
            port,
            LIMITED_VHOSTS,
            &[cluster("app", &[&a], "")],
            RATELIMIT,
        ))
        .await;
        let c = client();
        let limited = format!("http://127.0.0.1:{port}/limited");
        let mut ok = 0;
        let mut limited_replies = 0;
        for _ in 0..30 {
            let s = send(&c, &limited, &[]).await;
            match s.status {
                200 => ok += 1,
                429 => {
                    assert_eq!(
                        s.headers.get("x-envoy-ratelimited").map(|v| v.as_bytes()),
                        Some(&b"true"[..])
                    );
                    limited_replies += 1;
                }
                other => panic!("unexpected {other}"),
            }
        }
        assert_eq!((ok, limited_replies), (10, 20));
        // The other route has no bucket: never limited.
        let open = format!("http://127.0.0.1:{port}/open");
        for _ in 0..30 {
            assert_eq!(send(&c, &open, &[]).await.status, 200);
        }
        assert_eq!(
            p.stat("http.ingress_http.http_local_rate_limit.rate_limited")
                .await,
            20
        );
    })
    .await;
}
