//! An endpoint dies in the middle of a bounded load: retries plus outlier
//! detection keep the success rate at or above 99.9%.

mod resilience_common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use resilience_common::{bootstrap, client, cluster, percentile, send, Up};
use trellis_tests::process::ProxyProcess;
use trellis_tests::{free_port, within};

const VHOSTS: &str = r#"          - name: all
            domains: ["*"]
            routes:
            - match: { prefix: "/" }
              route:
                cluster: app
                timeout: 5s
                retry_policy:
                  retry_on: "5xx,reset,connect-failure"
                  num_retries: 3
                  per_try_timeout: 1s
                  retry_back_off: { base_interval: 0.005s, max_interval: 0.05s }
"#;

const CLUSTER_EXTRA: &str = r#"    outlier_detection:
      consecutive_5xx: 3
      consecutive_gateway_failure: 3
      enforcing_consecutive_gateway_failure: 100
      interval: 1s
      base_ejection_time: 30s
      max_ejection_percent: 50
    circuit_breakers:
      thresholds:
      - max_retries: 64
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_endpoint_mid_load_keeps_success_above_99_9_percent() {
    within(Duration::from_secs(90), "endpoint kill under load", async {
        let ups = [
            Up::start("a").await,
            Up::start("b").await,
            Up::start("c").await,
        ];
        let port = free_port();
        let p = ProxyProcess::start(&bootstrap(
            port,
            VHOSTS,
            &[cluster("app", &[&ups[0], &ups[1], &ups[2]], CLUSTER_EXTRA)],
            "",
        ))
        .await;
        let url = format!("http://127.0.0.1:{port}/work");
        let total = 6000;
        let workers = 12;
        let next = Arc::new(AtomicUsize::new(0));
        let ups = Arc::new(ups);
        let mut handles = Vec::new();
        for _ in 0..workers {
            let (next, url, ups) = (next.clone(), url.clone(), ups.clone());
            handles.push(tokio::spawn(async move {
                let c = client();
                let mut seen = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return seen;
                    }
                    if i == total / 3 {
                        ups[0].kill();
                    }
                    seen.push(send(&c, &url, &[]).await);
                }
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.expect("worker"));
        }
        let ok = all.iter().filter(|s| s.status == 200).count();
        let rate = ok as f64 / all.len() as f64;
        let mut lat: Vec<Duration> = all.iter().map(|s| s.latency).collect();
        lat.sort();
        let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
        println!(
            "endpoint kill: {ok}/{} ok ({:.3}%), p50 {:?}, p99 {:?}, max {:?}",
            all.len(),
            rate * 100.0,
            p50,
            p99,
            lat.last()
        );
        let failures: Vec<_> = all.iter().filter(|s| s.status != 200).collect();
        assert!(rate >= 0.999, "success {rate}: {failures:?}");
        assert!(
            p.stat("cluster.app.outlier_detection.ejections_enforced_total")
                .await
                >= 1
        );
        assert_eq!(
            p.stat("cluster.app.outlier_detection.ejections_active")
                .await,
            1
        );
        let clusters = p.admin_get("/clusters").await.body_text();
        let dead = format!("app::{}::health_flags::/failed_outlier_check", ups[0].addr);
        assert!(clusters.contains(&dead), "{clusters}");
        assert_eq!(p.stat("cluster.app.membership_healthy").await, 2);
        // After the ejection the dead host gets no tries at all.
        let before = p.stat("cluster.app.upstream_cx_connect_fail").await;
        let c = client();
        for _ in 0..50 {
            assert_eq!(send(&c, &url, &[]).await.status, 200);
        }
        assert_eq!(p.stat("cluster.app.upstream_cx_connect_fail").await, before);
    })
    .await;
}
