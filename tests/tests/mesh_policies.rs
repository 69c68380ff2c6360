//! App Mesh resilience policies, end to end through trellis-control: the
//! proxy must honour what the control plane makes of them. A listener's
//! `outlierDetection` ejects a failing instance at its clients, its
//! `connectionPool` overflows with 503 and its `timeout.perRequest` answers
//! 504 at the node's own sidecar, and a route's explicit `retryPolicy`
//! retries as written.

mod resilience_common;

use std::time::Duration;

use resilience_common::{client, send, Up};
use serde_json::{json, Value};
use trellis_tests::control::Control;
use trellis_tests::process::ProxyProcess;
use trellis_tests::upstream::Echo;
use trellis_tests::{eventually, free_port, within};

const LIMIT: Duration = Duration::from_secs(60);

fn node(name: &str, listener: Value, backends: Value) -> Value {
    json!({"meshName": "m", "virtualNodeName": name, "spec": {
        "listeners": [listener], "backends": backends}})
}

async fn register(control: &Control, node: &str, port: u16) {
    let port = port.to_string();
    control
        .cli(&[
            "register-instance",
            "--mesh",
            "m",
            "--virtual-node",
            node,
            "--address",
            "127.0.0.1",
            "--port",
            &port,
        ])
        .await;
}

/// The sidecar of `name`, started with trellis-proxy; (proxy, ingress, egress).
async fn sidecar(control: &Control, name: &str) -> (ProxyProcess, u16, u16) {
    let (ingress, egress) = (free_port(), free_port());
    let config = control
        .bootstrap(("--virtual-node", name), (ingress, egress), &[])
        .await;
    (ProxyProcess::start(&config).await, ingress, egress)
}

/// Mesh `m` with node `client` calling virtual service `app`, served by
/// `provider`, plus `docs`.
async fn mesh(control: &Control, provider: Value, docs: &[Value]) {
    let mut all = vec![
        json!({"meshName": "m", "spec": {"egressFilter": {"type": "DROP_ALL"}}}),
        node(
            "client",
            json!({"portMapping": {"port": 9, "protocol": "http"}}),
            json!([{"virtualService": {"virtualServiceName": "app"}}]),
        ),
    ];
    all.extend_from_slice(docs);
    all.push(json!({"meshName": "m", "virtualServiceName": "app", "spec": {"provider": provider}}));
    control.apply(&all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_a_failing_instance_at_its_clients() {
    within(LIMIT, "appmesh outlierDetection", async {
        let control = Control::start().await;
        let (good, bad) = (Up::start("good").await, Up::start("bad").await);
        bad.set_failing(true);
        let listener = json!({"portMapping": {"port": good.addr.port(), "protocol": "http"},
            "outlierDetection": {"maxServerErrors": 2, "maxEjectionPercent": 50,
                "interval": {"value": 1, "unit": "s"},
                "baseEjectionDuration": {"value": 60, "unit": "s"}}});
        mesh(
            &control,
            json!({"virtualNode": {"virtualNodeName": "app"}}),
            &[node("app", listener, json!([]))],
        )
        .await;
        register(&control, "app", good.addr.port()).await;
        register(&control, "app", bad.addr.port()).await;
        let (a, _, egress) = sidecar(&control, "client").await;
        let url = format!("http://127.0.0.1:{egress}/");
        let c = client();
        let flag = format!("{}::health_flags::/failed_outlier_check", bad.addr);
        eventually(
            Duration::from_secs(20),
            "the bad instance ejected",
            || async {
                send(&c, &url, &[("host", "app")]).await;
                a.admin_get("/clusters")
                    .await
                    .body_text()
                    .contains(&flag)
                    .then_some(())
            },
        )
        .await;
        let before = bad.hits();
        for _ in 0..20 {
            let s = send(&c, &url, &[("host", "app")]).await;
            assert_eq!(s.upstream.as_deref(), Some("good"));
        }
        assert_eq!(bad.hits(), before, "no traffic to the ejected instance");
    })
    .await;
}

/// Node `app` with `listener` policies, its sidecar in front of `app_port`.
async fn app_behind_sidecar(
    control: &Control,
    app_port: u16,
    policies: Value,
) -> (ProxyProcess, u16) {
    let mut listener = json!({"portMapping": {"port": app_port, "protocol": "http"}});
    if let (Some(l), Some(p)) = (listener.as_object_mut(), policies.as_object()) {
        l.extend(p.clone());
    }
    mesh(
        control,
        json!({"virtualNode": {"virtualNodeName": "app"}}),
        &[node("app", listener, json!([]))],
    )
    .await;
    let (b, ingress, _) = sidecar(control, "app").await;
    // Ready once the ingress listener routes to the app.
    let url = format!("http://127.0.0.1:{ingress}/");
    eventually(Duration::from_secs(10), "the ingress route", || async {
        (send(&client(), &url, &[]).await.status == 200).then_some(())
    })
    .await;
    (b, ingress)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_pool_overflow_answers_503() {
    within(LIMIT, "appmesh connectionPool", async {
        let control = Control::start().await;
        let app = Up::start("app").await;
        let pool =
            json!({"connectionPool": {"http": {"maxConnections": 1, "maxPendingRequests": 1}}});
        let (b, ingress) = app_behind_sidecar(&control, app.addr.port(), pool).await;
        app.set_delay(500);
        let url = format!("http://127.0.0.1:{ingress}/");
        let burst: Vec<_> = (0..6)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { send(&client(), &url, &[]).await })
            })
            .collect();
        let mut overloaded = 0;
        for h in burst {
            let s = h.await.expect("request");
            if s.status == 503 && s.headers.contains_key("x-envoy-overloaded") {
                overloaded += 1;
            } else {
                assert_eq!(s.status, 200, "{s:?}");
            }
        }
        assert!(overloaded >= 3, "{overloaded} of 6 overflowed");
        let stats = b.admin_get("/stats").await.body_text();
        let over: i64 = stats
            .lines()
            .filter(|l| {
                l.starts_with("cluster.cds_ingress")
                    && l.contains(".upstream_rq_pending_overflow: ")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
            .sum();
        assert_eq!(over, overloaded as i64, "{stats}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_timeout_answers_504() {
    within(LIMIT, "appmesh timeout.perRequest", async {
        let control = Control::start().await;
        let app = Up::start("app").await;
        let timeout = json!({"timeout": {"http": {"perRequest": {"value": 300, "unit": "ms"}}}});
        let (_b, ingress) = app_behind_sidecar(&control, app.addr.port(), timeout).await;
        app.set_delay(5_000);
        let s = send(&client(), &format!("http://127.0.0.1:{ingress}/"), &[]).await;
        assert_eq!(s.status, 504);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_retry_policy_retries_as_written() {
    within(LIMIT, "appmesh retryPolicy", async {
        let control = Control::start().await;
        let app = Echo::start("app").await;
        let port = app.addr.port();
        // `server-error` covers a 500, which App Mesh's default policy
        // does not retry: five tries in all can only come from this one.
        let route = json!({"meshName": "m", "virtualRouterName": "router", "routeName": "r", "spec": {
            "httpRoute": {"match": {"prefix": "/"},
                "action": {"weightedTargets": [{"virtualNode": "app", "weight": 1, "port": port}]},
                "retryPolicy": {"maxRetries": 4, "httpRetryEvents": ["server-error"],
                    "perRetryTimeout": {"value": 2, "unit": "s"}}}}});
        mesh(
            &control,
            json!({"virtualRouter": {"virtualRouterName": "router"}}),
            &[
                node("app", json!({"portMapping": {"port": port, "protocol": "http"}}), json!([])),
                json!({"meshName": "m", "virtualRouterName": "router", "spec": {
                    "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}),
                route,
            ],
        )
        .await;
        register(&control, "app", port).await;
        let (_a, _, egress) = sidecar(&control, "client").await;
        let c = client();
        eventually(Duration::from_secs(10), "the route to app", || async {
            let s = send(&c, &format!("http://127.0.0.1:{egress}/ok"), &[("host", "app")]).await;
            (s.status == 200).then_some(())
        })
        .await;
        let before = app.count();
        let s = send(&c, &format!("http://127.0.0.1:{egress}/status/500"), &[("host", "app")]).await;
        assert_eq!(s.status, 500);
        assert_eq!(app.count() - before, 5, "one try and four retries");
    })
    .await;
}
