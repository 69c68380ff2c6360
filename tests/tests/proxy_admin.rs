//! The admin API, lifecycle (drain, signals) and bootstrap errors.

use std::time::Duration;

use trellis_tests::config::{cluster, http_proxy};
use trellis_tests::process::{run_to_exit, workspace_bin, ProxyProcess};
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
