//! App Mesh gateway routes end to end: the API, trellis-control's
//! translation and a gateway proxy on loopback, one mesh and many requests.
//!
//! One virtual gateway with an `http`, an `http2` and a `grpc` listener.
//! Every HTTP gateway route targets its own virtual service, all provided
//! by one virtual node in front of one echo app, so the Host the app sees
//! (the target service's name, which the gateway writes) names the gateway
//! route that matched; the path it sees shows the rewrite.
//!
//! Run once with trellis-proxy and once with stock Envoy as the gateway.

use std::path::PathBuf;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use trellis_tests::control::Control;
use trellis_tests::grpc::{raw_message, raw_unary, GrpcEcho};
use trellis_tests::process::{require_envoy, workspace_bin, ProxyProcess};
use trellis_tests::upstream::Echo;
use trellis_tests::{client, eventually, free_port, loopback, within};

fn node(name: &str, port: u16, protocol: &str) -> Value {
    json!({"meshName": "m", "virtualNodeName": name, "spec": {
        "listeners": [{"portMapping": {"port": port, "protocol": protocol}}]}})
}

fn service(name: &str, node: &str) -> Value {
    json!({"meshName": "m", "virtualServiceName": name, "spec": {
        "provider": {"virtualNode": {"virtualNodeName": node}}}})
}

/// A gateway route of `kind` (`httpRoute`, `http2Route`, `grpcRoute`) on
/// listener `port` to `{name}.m`, with `extra` merged into its match and
/// `rewrite` as its action's rewrite.
fn route(kind: &str, name: &str, port: u16, matcher: Value, rewrite: Option<Value>) -> Value {
    let mut m = matcher;
    m["port"] = json!(port);
    let mut action =
        json!({"target": {"virtualService": {"virtualServiceName": format!("{name}.m")}}});
    if let Some(r) = rewrite {
        action["rewrite"] = r;
    }
    json!({"meshName": "m", "virtualGatewayName": "edge", "gatewayRouteName": name,
        "spec": {kind: {"match": m, "action": action}}})
}

fn prioritised(mut r: Value, priority: u32) -> Value {
    r["spec"]["priority"] = json!(priority);
    r
}

/// `METHOD http://127.0.0.1:PORT{target}` with `Host: host`: the Host and
/// path the app saw, or the gateway's status when the app was not reached.
async fn through(port: u16, method: Method, host: &str, target: &str) -> (String, String) {
    let url = format!("http://127.0.0.1:{port}{target}");
    let r = client::request(method, &url, &[("host", host)], "")
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    if r.status != 200 {
        return (format!("status {}", r.status), String::new());
    }
    let seen = r.echoed();
    (
        seen["headers"]["host"].as_str().unwrap_or("").to_string(),
        seen["path"].as_str().unwrap_or("").to_string(),
    )
}

async fn scenario(proxy: PathBuf) {
    let control = Control::start().await;
    let app = Echo::start("app").await;
    let rpc = GrpcEcho::start("rpc").await;
    let (http, h2, grpc) = (free_port(), free_port(), free_port());
    let h = |name: &str, matcher: Value| route("httpRoute", name, http, matcher, None);
    let rewritten =
        |name: &str, matcher: Value, rw: Value| route("httpRoute", name, http, matcher, Some(rw));
    let services = [
        "catchall",
        "exact",
        "regex",
        "pv",
        "keep",
        "hostexact",
        "hostsuffix",
        "query",
        "method",
        "deep",
        "shallow",
        "nohost",
        "h2",
    ];
    let mut docs = vec![
        json!({"meshName": "m", "spec": {}}),
        node("app", app.addr.port(), "http"),
        node("app2", app.addr.port(), "http2"),
        node("rpc", rpc.addr.port(), "grpc"),
        service("grpc.m", "rpc"),
        json!({"meshName": "m", "virtualGatewayName": "edge", "spec": {"listeners": [
            {"portMapping": {"port": http, "protocol": "http"}},
            {"portMapping": {"port": h2, "protocol": "http2"}},
            {"portMapping": {"port": grpc, "protocol": "grpc"}},
        ]}}),
    ];
    for s in services {
        docs.push(service(
            &format!("{s}.m"),
            if s == "h2" { "app2" } else { "app" },
        ));
    }
    docs.extend([
        // No priority anywhere below but in deep/shallow: a `/` prefix must
        // not hide the exact, regex, hostname, query or method routes.
        h("catchall", json!({"prefix": "/"})),
        rewritten(
            "exact",
            json!({"path": {"exact": "/exact"}}),
            json!({"path": {"exact": "/rewritten"}}),
        ),
        h("regex", json!({"path": {"regex": "/re/[0-9]+"}})),
        rewritten(
            "pv",
            json!({"prefix": "/pv/"}),
            json!({"prefix": {"value": "/new/"}}),
        ),
        rewritten(
            "keep",
            json!({"prefix": "/keep/"}),
            json!({"prefix": {"defaultPrefix": "DISABLED"}}),
        ),
        h(
            "hostexact",
            json!({"prefix": "/", "hostname": {"exact": "exact.example.com"}}),
        ),
        h(
            "hostsuffix",
            json!({"prefix": "/", "hostname": {"suffix": ".suffix.example.com"}}),
        ),
        h(
            "query",
            json!({"prefix": "/q/", "queryParameters": [{"name": "v", "match": {"exact": "1"}}]}),
        ),
        h("method", json!({"prefix": "/m/", "method": "POST"})),
        // Priority beats the longer prefix.
        prioritised(h("deep", json!({"prefix": "/p/deeper/"})), 5),
        prioritised(h("shallow", json!({"prefix": "/p/"})), 1),
        rewritten(
            "nohost",
            json!({"prefix": "/nohost/"}),
            json!({"hostname": {"defaultTargetHostname": "DISABLED"}}),
        ),
        route("http2Route", "h2", h2, json!({"prefix": "/"}), None),
        route(
            "grpcRoute",
            "grpc",
            grpc,
            json!({"serviceName": "trellis.test.echo.Echo"}),
            None,
        ),
    ]);
    control.apply(&docs).await;
    for (node, port) in [
        ("app", app.addr.port()),
        ("app2", app.addr.port()),
        ("rpc", rpc.addr.port()),
    ] {
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
    let config = control
        .bootstrap(
            ("--virtual-gateway", "edge"),
            (free_port(), free_port()),
            &[],
        )
        .await;
    let _gateway = ProxyProcess::start_with(&proxy, &config, &[]).await;
    eventually(Duration::from_secs(20), "the gateway routes", || async {
        let (host, _) = through(http, Method::GET, "x", "/exact").await;
        (host == "exact.m").then_some(())
    })
    .await;

    let any = "www.example.com";
    for (method, host, target, want_host, want_path) in [
        (
            Method::GET,
            any,
            "/anything/else",
            "catchall.m",
            "/anything/else",
        ),
        // path.exact with its exact rewrite; the exact path only.
        (Method::GET, any, "/exact", "exact.m", "/rewritten"),
        (Method::GET, any, "/exact/more", "catchall.m", "/exact/more"),
        // path.regex matches the whole path; no rewrite.
        (Method::GET, any, "/re/42", "regex.m", "/re/42"),
        (Method::GET, any, "/re/x", "catchall.m", "/re/x"),
        // Prefix rewrite `value`, and defaultPrefix DISABLED.
        (Method::GET, any, "/pv/a/b", "pv.m", "/new/a/b"),
        (Method::GET, any, "/keep/a", "keep.m", "/keep/a"),
        // Hostname exact and suffix, each beating the catch-all `/`.
        (Method::GET, "exact.example.com", "/h", "hostexact.m", "/h"),
        (
            Method::GET,
            "exact.example.com:8443",
            "/h",
            "hostexact.m",
            "/h",
        ),
        (
            Method::GET,
            "a.suffix.example.com",
            "/h",
            "hostsuffix.m",
            "/h",
        ),
        (Method::GET, "suffix.example.com", "/h", "catchall.m", "/h"),
        // Query parameters and method.
        (Method::GET, any, "/q/x?v=1", "query.m", "/x?v=1"),
        (Method::GET, any, "/q/x?v=2", "catchall.m", "/q/x?v=2"),
        (Method::POST, any, "/m/x", "method.m", "/x"),
        (Method::GET, any, "/m/x", "catchall.m", "/m/x"),
        // Lower priority value first, though its prefix is shorter.
        (Method::GET, any, "/p/deeper/x", "shallow.m", "/deeper/x"),
        // defaultTargetHostname DISABLED keeps the client's Host.
        (Method::GET, any, "/nohost/x", any, "/x"),
    ] {
        let seen = through(http, method.clone(), host, target).await;
        assert_eq!(
            seen,
            (want_host.to_string(), want_path.to_string()),
            "{method} {host}{target}"
        );
    }

    // The http2 listener: HTTP/2 from the client to the app, whose request
    // URI carries the authority (the target service).
    let r = client::request_h2(Method::GET, &format!("http://127.0.0.1:{h2}/two"), &[], "")
        .await
        .expect("h2 through the gateway");
    let seen = r.echoed();
    assert_eq!(
        (r.status, seen["path"].as_str(), seen["version"].as_str()),
        (200, Some("http://h2.m/two"), Some("HTTP/2.0")),
        "{seen}"
    );
    // The grpc listener: the route's service name reaches the gRPC app.
    let req = trellis_tests::grpc::pb::EchoRequest {
        message: "through the gateway".into(),
        ..Default::default()
    };
    let r = raw_unary(loopback(grpc), &req, &[])
        .await
        .expect("grpc call");
    let reply = raw_message(&r).unwrap_or_else(|| panic!("no gRPC message: {r:?}"));
    assert_eq!(reply.message, "through the gateway");
    assert_eq!(rpc.calls(), 1);
}

#[tokio::test]
async fn gateway_routes_match_rewrite_and_order_as_app_mesh_with_trellis() {
    within(
        Duration::from_secs(120),
        "gateway routes (trellis)",
        async { scenario(workspace_bin("trellis-proxy")).await },
    )
    .await;
}

#[tokio::test]
async fn gateway_routes_match_rewrite_and_order_as_app_mesh_with_envoy() {
    within(Duration::from_secs(120), "gateway routes (envoy)", async {
        scenario(require_envoy()).await
    })
    .await;
}
