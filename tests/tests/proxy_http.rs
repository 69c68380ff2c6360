//! trellis-proxy as an HTTP front proxy: routing, actions, headers, errors.

use std::time::Duration;

use http::Method;
use trellis_tests::client::{self, request, request_h2};
use trellis_tests::config::{cluster, http_proxy};
use trellis_tests::free_port;
use trellis_tests::process::ProxyProcess;
use trellis_tests::upstream::Echo;

async fn proxy(vhosts: &str, clusters: &[String]) -> (ProxyProcess, String) {
    let port = free_port();
    let p = ProxyProcess::start(&http_proxy(port, vhosts, clusters, "")).await;
    (p, format!("http://127.0.0.1:{port}"))
}

const CATCH_ALL: &str = r#"          - name: all
            domains: ["*"]
            routes:
            - match: { prefix: "/" }
              route: { cluster: app }
"#;

#[tokio::test]
async fn forwards_and_adds_envoy_headers() {
    let app = Echo::start("app").await;
    let (_p, url) = proxy(CATCH_ALL, &[cluster("app", &[app.addr], "")]).await;
    let r = request(
        Method::GET,
        &format!("{url}/hello?x=1"),
        &[("host", "example.com")],
        "",
    )
    .await
    .expect("request through the proxy");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("server"), Some("envoy"));
    assert!(r.header("x-envoy-upstream-service-time").is_some());
    let seen = r.echoed();
    assert_eq!(seen["path"], "/hello?x=1");
    assert_eq!(seen["headers"]["host"], "example.com");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http");
    assert_eq!(
        seen["headers"]["x-request-id"].as_str().map(str::len),
        Some(36)
    );
    assert_eq!(seen["headers"]["x-envoy-expected-rq-timeout-ms"], "15000");
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped() {
    let app = Echo::start("app").await;
    let (_p, url) = proxy(CATCH_ALL, &[cluster("app", &[app.addr], "")]).await;
    let r = request(
        Method::GET,
        &format!("{url}/"),
        &[
            ("connection", "keep-alive, x-drop"),
            ("x-drop", "1"),
            ("keep-alive", "timeout=5"),
            ("x-keep", "1"),
        ],
        "",
    )
    .await
    .expect("request");
    let seen = r.echoed();
    assert!(seen["headers"].get("x-drop").is_none(), "{seen}");
    assert!(seen["headers"].get("keep-alive").is_none(), "{seen}");
    assert_eq!(seen["headers"]["x-keep"], "1");
}

#[tokio::test]
async fn no_route_is_404() {
    let app = Echo::start("app").await;
    let vhosts = r#"          - name: only
            domains: ["only.example"]
            routes:
            - match: { prefix: "/api" }
              route: { cluster: app }
"#;
    let (p, url) = proxy(vhosts, &[cluster("app", &[app.addr], "")]).await;
    let r = request(
        Method::GET,
        &format!("{url}/api"),
        &[("host", "other.example")],
        "",
    )
    .await
    .expect("request");
    assert_eq!(r.status, 404);
    let r = request(
        Method::GET,
        &format!("{url}/nope"),
        &[("host", "only.example")],
        "",
    )
    .await
    .expect("request");
    assert_eq!(r.status, 404);
    assert_eq!(app.count(), 0);
    assert_eq!(p.stat("http.ingress_http.no_route").await, 2);
}

#[tokio::test]
async fn empty_cluster_is_503_no_healthy_upstream() {
    let (_p, url) = proxy(CATCH_ALL, &[cluster("app", &[], "")]).await;
    let r = client::get(&format!("{url}/")).await.expect("request");
    assert_eq!(r.status, 503);
    assert_eq!(r.body_text(), "no healthy upstream");
}

#[tokio::test]
async fn connect_failure_is_503() {
    let (dead, _guard) = trellis_tests::refused_address();
    let (p, url) = proxy(CATCH_ALL, &[cluster("app", &[dead], "")]).await;
    let r = client::get(&format!("{url}/")).await.expect("request");
    assert_eq!(r.status, 503);
    assert!(
        r.body_text().starts_with("upstream connect error"),
        "{}",
        r.body_text()
    );
    assert_eq!(p.stat("cluster.app.upstream_cx_connect_fail").await, 1);
}

#[tokio::test]
async fn route_timeout_is_504() {
    let app = Echo::start("app").await;
    let vhosts = r#"          - name: all
            domains: ["*"]
            routes:
            - match: { prefix: "/" }
              route: { cluster: app, timeout: 0.2s }
"#;
    let (p, url) = proxy(vhosts, &[cluster("app", &[app.addr], "")]).await;
    let r = client::get(&format!("{url}/delay/2000"))
        .await
        .expect("request");
    assert_eq!(r.status, 504);
    assert_eq!(r.body_text(), "upstream request timeout");
    assert_eq!(p.stat("cluster.app.upstream_rq_timeout").await, 1);
}

#[tokio::test]
async fn retries_move_to_another_endpoint() {
    let app = Echo::start("app").await;
    let (dead, _guard) = trellis_tests::refused_address();
    let vhosts = r#"          - name: all
            domains: ["*"]
            routes:
            - match: { prefix: "/" }
              route:
                cluster: app
                retry_policy: { retry_on: connect-failure, num_retries: 3 }
"#;
    let (p, url) = proxy(vhosts, &[cluster("app", &[dead, app.addr], "")]).await;
    for _ in 0..10 {
        let r = client::get(&format!("{url}/")).await.expect("request");
        assert_eq!(r.status, 200);
    }
    assert!(p.stat("cluster.app.upstream_rq_retry").await >= 1);
}

#[tokio::test]
async fn retry_on_5xx_counts_and_gives_up() {
    let app = Echo::start("app").await;
    let vhosts = r#"          - name: all
            domains: ["*"]
            routes:
            - match: { prefix: "/" }
              route:
                cluster: app
                retry_policy: { retry_on: 5xx, num_retries: 2, retry_back_off: { base_interval: 0.001s } }
"#;
    let (p, url) = proxy(vhosts, &[cluster("app", &[app.addr], "")]).await;
    let r = client::get(&format!("{url}/status/503"))
        .await
        .expect("request");
    assert_eq!(r.status, 503);
    assert_eq!(app.count(), 3);
    assert_eq!(p.stat("cluster.app.upstream_rq_retry").await, 2);
}

#[tokio::test]
async fn rewrites_and_weights_and_local_actions() {
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let vhosts = r#"          - name: all
            domains: ["*"]
            routes:
            - match: { prefix: "/old/" }
              route: { cluster: a, prefix_rewrite: "/new/", host_rewrite_literal: rewritten.example }
            - match: { path: "/direct" }
              direct_response: { status: 418, body: { inline_string: "teapot" } }
            - match: { path: "/moved" }
              redirect: { host_redirect: elsewhere.example, response_code: FOUND }
            - match: { prefix: "/split" }
              route:
                weighted_clusters:
                  clusters:
                  - { name: a, weight: 80 }
                  - { name: b, weight: 20 }
"#;
    let (_p, url) = proxy(
        vhosts,
        &[cluster("a", &[a.addr], ""), cluster("b", &[b.addr], "")],
    )
    .await;
    let r = client::get(&format!("{url}/old/thing"))
        .await
        .expect("request");
    let seen = r.echoed();
    assert_eq!(seen["path"], "/new/thing");
    assert_eq!(seen["headers"]["host"], "rewritten.example");

    let r = client::get(&format!("{url}/direct"))
        .await
        .expect("request");
    assert_eq!((r.status, r.body_text().as_str()), (418, "teapot"));

    let r = client::get(&format!("{url}/moved")).await.expect("request");
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("http://elsewhere.example/moved"));

    let mut to_a = 0;
    for _ in 0..200 {
        let r = client::get(&format!("{url}/split")).await.expect("request");
        if r.header("x-upstream") == Some("a") {
            to_a += 1;
        }
    }
    // 80% of 200 = 160; 4 standard deviations is about ±23.
    assert!((137..=183).contains(&to_a), "a got {to_a} of 200");
}

#[tokio::test]
async fn http2_downstream_to_http1_and_http2_upstreams() {
    let app = Echo::start("app").await;
    let h2 = r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
"#;
    let vhosts = r#"          - name: all
            domains: ["*"]
            routes:
            - match: { prefix: "/h2" }
              route: { cluster: app_h2 }
            - match: { prefix: "/" }
              route: { cluster: app }
"#;
    let (_p, url) = proxy(
        vhosts,
        &[
            cluster("app", &[app.addr], ""),
            cluster("app_h2", &[app.addr], h2),
        ],
    )
    .await;
    let r = request_h2(Method::POST, &format!("{url}/h1"), &[], "body")
        .await
        .expect("h2 request");
    assert_eq!(r.status, 200);
    let seen = r.echoed();
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["body_len"], 4);
    let r = request_h2(Method::GET, &format!("{url}/h2"), &[], "")
        .await
        .expect("h2 request");
    assert_eq!(r.echoed()["version"], "HTTP/2.0");
    let r = request(Method::GET, &format!("{url}/h2"), &[], "")
        .await
        .expect("h1 request");
    assert_eq!(r.echoed()["version"], "HTTP/2.0");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let app = Echo::start("app").await;
    let (_p, url) = proxy(CATCH_ALL, &[cluster("app", &[app.addr], "")]).await;
    let addr = url.trim_start_matches("http://").parse().expect("addr");
    let out = client::raw(
        addr,
        b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let first = out.find("/first").expect("first answered");
    let second = out.find("/second").expect("second answered");
    assert!(first < second);
}
