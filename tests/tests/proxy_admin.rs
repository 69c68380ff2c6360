//! The admin API, lifecycle (drain, signals) and bootstrap errors.

use std::time::Duration;

use trellis_tests::config::{cluster, http_proxy};
use trellis_tests::process::{require_envoy, run_to_exit, workspace_bin, ProxyProcess};
use trellis_tests::upstream::Echo;
use trellis_tests::{client, free_port};

const CATCH_ALL: &str = r#"          - name: all
            domains: ["*"]
            routes:
            - match: { prefix: "/" }
              route: { cluster: app }
"#;

#[tokio::test]
async fn admin_endpoints_answer_like_envoy() {
    let app = Echo::start("app").await;
    let port = free_port();
    let p = ProxyProcess::start(&http_proxy(
        port,
        CATCH_ALL,
        &[cluster("app", &[app.addr], "")],
        "",
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(
            client::get(&format!("http://127.0.0.1:{port}/x"))
                .await
                .expect("request")
                .status,
            200
        );
    }
    let ready = p.admin_get("/ready").await;
    assert_eq!((ready.status, ready.body_text().as_str()), (200, "LIVE\n"));
    assert_eq!(p.stat("cluster.app.upstream_rq_total").await, 3);
    assert_eq!(p.stat("cluster.app.upstream_rq_200").await, 3);
    assert_eq!(p.stat("http.ingress_http.downstream_rq_2xx").await, 3);
    let listener_cx = format!("listener.127.0.0.1_{port}.downstream_cx_total");
    assert!(p.stat(&listener_cx).await >= 1);

    let prom = p.admin_get("/stats/prometheus").await.body_text();
    assert!(
        prom.contains("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"app\"} 3"),
        "{prom}"
    );
    assert!(prom.contains("envoy_cluster_upstream_rq_xx{envoy_response_code_class=\"2\",envoy_cluster_name=\"app\"} 3"));

    let filtered = p
        .admin_get("/stats?filter=upstream_rq_total")
        .await
        .body_text();
    assert!(
        filtered.lines().all(|l| l.contains("upstream_rq_total")),
        "{filtered}"
    );

    let dump: serde_json::Value =
        serde_json::from_slice(&p.admin_get("/config_dump").await.body).expect("json");
    let types: Vec<&str> = dump["configs"]
        .as_array()
        .expect("configs")
        .iter()
        .filter_map(|c| c["@type"].as_str())
        .collect();
    assert!(
        types.contains(&"type.googleapis.com/envoy.admin.v3.ClustersConfigDump"),
        "{types:?}"
    );
    assert!(dump.to_string().contains("\"ingress_http\""));

    let clusters = p.admin_get("/clusters").await.body_text();
    assert!(
        clusters.contains(&format!("app::{}::rq_active::0", app.addr)),
        "{clusters}"
    );
    let listeners = p.admin_get("/listeners").await.body_text();
    assert!(
        listeners.contains(&format!("ingress::127.0.0.1:{port}")),
        "{listeners}"
    );
    let info: serde_json::Value =
        serde_json::from_slice(&p.admin_get("/server_info").await.body).expect("json");
    assert_eq!(info["state"], "LIVE");

    assert_eq!(p.admin_post("/logging?level=debug").await.status, 200);
    assert_eq!(p.admin_post("/logging?level=loud").await.status, 400);
    assert_eq!(p.admin_get("/quitquitquit").await.status, 405);
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let app = Echo::start("app").await;
    let port = free_port();
    let mut p = ProxyProcess::start(&http_proxy(
        port,
        CATCH_ALL,
        &[cluster("app", &[app.addr], "")],
        "",
    ))
    .await;
    let slow =
        tokio::spawn(
            async move { client::get(&format!("http://127.0.0.1:{port}/delay/800")).await },
        );
    // Signal only once the request is in flight at the upstream.
    trellis_tests::eventually(
        Duration::from_secs(10),
        "the request to reach the upstream",
        || {
            let n = app.count();
            async move { (n >= 1).then_some(()) }
        },
    )
    .await;
    p.signal(15);
    let r = slow
        .await
        .expect("join")
        .expect("in-flight request finished");
    assert_eq!(r.status, 200);
    let status = p.wait_exit(Duration::from_secs(10)).await.expect("exited");
    assert_eq!(status.code(), Some(0));
}

async fn server_state(p: &ProxyProcess) -> String {
    let info: serde_json::Value =
        serde_json::from_str(&p.admin_get("/server_info").await.body_text())
            .expect("server_info is JSON");
    info["state"].as_str().unwrap_or_default().to_string()
}

/// `/healthcheck/fail` takes a proxy out of rotation (`/ready` and
/// `/server_info` say DRAINING, `server.state` is 1, `server.live` 0) while
/// it keeps serving;
/// `/healthcheck/ok` brings it back; `/drain_listeners` leaves it LIVE.
/// Checked on trellis-proxy and on stock Envoy.
#[tokio::test]
async fn healthcheck_fail_and_ok_switch_readiness_as_envoy_does() {
    let app = Echo::start("app").await;
    for bin in [workspace_bin("trellis-proxy"), require_envoy()] {
        let port = free_port();
        let config = http_proxy(port, CATCH_ALL, &[cluster("app", &[app.addr], "")], "");
        let p = ProxyProcess::start_with(&bin, &config, &[]).await;
        let who = bin.display().to_string();
        let ready = p.admin_get("/ready").await;
        assert_eq!(
            (ready.status, ready.body_text().as_str()),
            (200, "LIVE\n"),
            "{who}"
        );

        assert_eq!(p.admin_post("/healthcheck/fail").await.status, 200, "{who}");
        let ready = p.admin_get("/ready").await;
        assert_eq!(
            (ready.status, ready.body_text().as_str()),
            (503, "DRAINING\n"),
            "{who}"
        );
        assert_eq!(server_state(&p).await, "DRAINING", "{who}");
        // Envoy refreshes its server gauges at each stats flush (5 s).
        trellis_tests::eventually(Duration::from_secs(8), "server.state 1", || async {
            (p.stat("server.state").await == 1 && p.stat("server.live").await == 0).then_some(())
        })
        .await;
        let served = client::get(&format!("http://127.0.0.1:{port}/x")).await;
        assert_eq!(
            served.map(|r| r.status).ok(),
            Some(200),
            "{who}: still serving"
        );

        assert_eq!(p.admin_post("/healthcheck/ok").await.status, 200, "{who}");
        let ready = p.admin_get("/ready").await;
        assert_eq!(
            (ready.status, ready.body_text().as_str()),
            (200, "LIVE\n"),
            "{who}"
        );
        assert_eq!(server_state(&p).await, "LIVE", "{who}");
        // Envoy refreshes its server gauges at each stats flush (5 s).
        trellis_tests::eventually(Duration::from_secs(8), "server.state 0", || async {
            (p.stat("server.state").await == 0 && p.stat("server.live").await == 1).then_some(())
        })
        .await;
        trellis_tests::eventually(Duration::from_secs(8), "server.uptime", || async {
            (p.stat("server.uptime").await > 0).then_some(())
        })
        .await;
        // The harness runs every proxy with `--concurrency 1`.
        assert_eq!(p.stat("server.concurrency").await, 1, "{who}");

        assert_eq!(p.admin_post("/drain_listeners").await.status, 200, "{who}");
        let ready = p.admin_get("/ready").await;
        assert_eq!(
            (ready.status, ready.body_text().as_str()),
            (200, "LIVE\n"),
            "{who}"
        );
    }
}

#[tokio::test]
async fn drain_listeners_stops_accepting() {
    let app = Echo::start("app").await;
    let port = free_port();
    let p = ProxyProcess::start(&http_proxy(
        port,
        CATCH_ALL,
        &[cluster("app", &[app.addr], "")],
        "",
    ))
    .await;
    assert_eq!(p.admin_post("/drain_listeners").await.status, 200);
    trellis_tests::eventually(
        Duration::from_secs(5),
        "the listener to close",
        || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn bad_bootstrap_exits_2_naming_file_and_field() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("bad.yaml");
    let bin = workspace_bin("trellis-proxy");
    let cases = [
        (
            "static_resources:\n  clusters:\n  - name: a\n    connect_timeout: 1s\n    lb_policy: ROUND_ROBIN\n    typo_field: 1\n",
            "static_resources.clusters[0].typo_field",
        ),
        (
            "static_resources:\n  clusters:\n  - name: a\n    connect_timeout: soon\n",
            "static_resources.clusters[0].connect_timeout",
        ),
        (
            "static_resources:\n  clusters:\n  - name: a\n    type: STATIC\n    lb_policy: CLUSTER_PROVIDED\n",
            "static_resources.clusters[0].lb_policy",
        ),
    ];
    for (yaml, field) in cases {
        std::fs::write(&path, yaml).expect("write");
        let (code, stderr) = run_to_exit(&bin, &["-c", path.to_str().expect("utf8 path")]).await;
        assert_eq!(code, Some(2), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains("bad.yaml"), "{stderr}");
        assert!(stderr.contains(field), "expected {field} in {stderr}");
    }
    let (code, _) = run_to_exit(&bin, &["--no-such-flag"]).await;
    assert_eq!(code, Some(2));
}

#[tokio::test]
async fn example_bootstrap_validates() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/front-proxy/bootstrap.yaml"
    );
    let bin = workspace_bin("trellis-proxy");
    let (code, stderr) = run_to_exit(&bin, &["--mode", "validate", "-c", example]).await;
    assert_eq!(code, Some(0), "{stderr}");
    if let Some(envoy) = trellis_tests::process::envoy_bin() {
        let (code, stderr) = run_to_exit(&envoy, &["--mode", "validate", "-c", example]).await;
        assert_eq!(code, Some(0), "stock Envoy refuses the example: {stderr}");
    }
}
