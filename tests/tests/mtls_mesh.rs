//! mTLS across the mesh end to end: trellis-control's CA issues each sidecar
//! its SVID over SDS, listeners are STRICT, and client policies verify the
//! server's SPIFFE ID.
//!
//! Node `client` (sidecar A) calls virtual service `color`, provided by node
//! `blue` (sidecar B in front of app blue, STRICT TLS with mesh-issued
//! identities). Node `intruder` (sidecar C) reaches sidecar B's ingress
//! through a service `shadow` whose node's only instance is that ingress,
//! also over TLS with its own valid SVID; B accepts only the nodes that list
//! its services as backends, so C's requests fail.
//!
//! A second test bootstraps a sidecar with `--issue-token` and checks that
//! another node's token opens no stream. A third reads both sidecars'
//! metrics: each hop's per-peer series name the other (the caller's
//! verified identity on B, the target service and node on A), so one scrape
//! per proxy draws the service graph.
//!

use std::path::Path;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use trellis_tests::control::Control;
use trellis_tests::process::{workspace_bin, ProxyProcess};
use trellis_tests::upstream::Echo;
use trellis_tests::{client, eventually, free_port};

/// A bootstrap for `node`, carrying a freshly issued token if `token`.
async fn bootstrap(
    control: &Control,
    node: &str,
    (ingress, egress): (u16, u16),
    token: bool,
) -> String {
    let (i, e) = (ingress.to_string(), egress.to_string());
    let mut args = vec![
        "bootstrap",
        "--mesh",
        "m",
        "--virtual-node",
        node,
        "--xds-addr",
        &control.xds,
        "--admin-port",
        "0",
        "--listener-address",
        "127.0.0.1",
        "--ingress-port",
        &i,
        "--egress-port",
        &e,
    ];
    if token {
        args.push("--issue-token");
    }
    control.cli(&args).await
}

/// The app that answered a request for `host` through the egress port.
async fn upstream(egress: u16, host: &str) -> Option<String> {
    let r = client::request(
        Method::GET,
        &format!("http://127.0.0.1:{egress}/hello"),
        &[("host", host)],
        "",
    )
    .await
    .ok()?;
    (r.status == 200).then(|| r.echoed()["upstream"].as_str().unwrap_or("").to_string())
}

/// Mesh-issued identities (`sds`) on both sides.
fn mesh_tls() -> Value {
    json!({
        "certificate": {"sds": {"secretName": "trellis-svid"}},
        "validation": {"trust": {"sds": {"secretName": "trellis-ca"}}},
    })
}

fn node(name: &str, port: u16, backends: &[&str], strict: bool) -> Value {
    let mut listener = json!({"portMapping": {"port": port, "protocol": "http"}});
    if strict {
        let mut tls = mesh_tls();
        tls["mode"] = json!("STRICT");
        listener["tls"] = tls;
    }
    let mut policy = mesh_tls();
    policy["enforce"] = json!(true);
    json!({"meshName": "m", "virtualNodeName": name, "spec": {
        "listeners": [listener],
        "backends": backends.iter()
            .map(|b| json!({"virtualService": {"virtualServiceName": b}}))
            .collect::<Vec<_>>(),
        "backendDefaults": {"clientPolicy": {"tls": policy}},
    }})
}

fn service(name: &str, provider: &str) -> Value {
    json!({"meshName": "m", "virtualServiceName": name, "spec": {
        "provider": {"virtualNode": {"virtualNodeName": provider}}}})
}

async fn sidecar(proxy: &Path, bootstrap: &str) -> ProxyProcess {
    ProxyProcess::start_with(proxy, bootstrap, &[]).await
}

#[tokio::test]
async fn strict_mtls_between_sidecars_refuses_a_node_not_allowed() {
    let proxy = workspace_bin("trellis-proxy");
    let control = Control::start().await;
    let blue = Echo::start("blue").await;
    let blue_port = blue.addr.port();
    let (a, b, c) = (
        (free_port(), free_port()),
        (free_port(), free_port()),
        (free_port(), free_port()),
    );
    control
        .apply(&[
            json!({"meshName": "m", "spec": {}}),
            node("blue", blue_port, &[], true),
            node("client", 9, &["color"], false),
            node("intruder", 9, &["shadow"], false),
            node("blue-shadow", blue_port, &[], false),
            service("color", "blue"),
            service("shadow", "blue-shadow"),
        ])
        .await;
    // blue-shadow's only instance is sidecar B's ingress.
    let ingress_b = b.0.to_string();
    control
        .cli(&[
            "register-instance",
            "--mesh",
            "m",
            "--virtual-node",
            "blue-shadow",
            "--address",
            "127.0.0.1",
            "--port",
            &ingress_b,
        ])
        .await;
    let sidecar_b = sidecar(&proxy, &bootstrap(&control, "blue", b, false).await).await;
    let sidecar_a = sidecar(&proxy, &bootstrap(&control, "client", a, false).await).await;
    let sidecar_c = sidecar(&proxy, &bootstrap(&control, "intruder", c, false).await).await;

    eventually(Duration::from_secs(15), "blue over mTLS", || async {
        (upstream(a.1, "color").await.as_deref() == Some("blue")).then_some(())
    })
    .await;
    let before = blue.count();
    // Plain text into B's STRICT ingress is refused.
    let plain = client::get(&format!("http://127.0.0.1:{}/direct", b.0)).await;
    assert!(
        plain.map_or(true, |r| r.status != 200),
        "plain text must not pass a STRICT listener"
    );
    // The intruder has a valid SVID, but not one B accepts.
    for _ in 0..5 {
        assert_eq!(upstream(c.1, "shadow").await, None);
    }
    assert_eq!(
        blue.count(),
        before,
        "no request of the intruder reached blue"
    );

    drop((sidecar_a, sidecar_b, sidecar_c, control));
}

/// The proxy sends the bootstrap's gRPC `initial_metadata` on its ADS stream,
/// as stock Envoy does.
#[tokio::test]
async fn a_stolen_node_token_opens_no_other_node() {
    let proxy = workspace_bin("trellis-proxy");
    let control = Control::start().await;
    let blue = Echo::start("blue").await;
    control
        .apply(&[
            json!({"meshName": "m", "spec": {}}),
            node("blue", blue.addr.port(), &[], false),
            node("intruder", 9, &[], false),
        ])
        .await;
    let own = bootstrap(&control, "intruder", (free_port(), free_port()), true).await;
    let sidecar_c = sidecar(&proxy, &own).await;
    // A stolen token: the intruder's bootstrap with blue's token is refused.
    let token = control
        .cli(&["token", "issue", "--mesh", "m", "--virtual-node", "blue"])
        .await;
    let stolen = bootstrap(&control, "intruder", (free_port(), free_port()), true).await;
    let stolen = stolen
        .lines()
        .map(|l| match l.split_once("Bearer ") {
            Some((head, _)) => format!("{head}Bearer {}", token.trim()),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    // The proxy starts but never gets its configuration (so it is never
    // ready), and the control plane lists no second intruder stream.
    let refused = tokio::time::timeout(
        Duration::from_secs(3),
        ProxyProcess::try_start_with(&proxy, &stolen, &[]),
    )
    .await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "a proxy with another node's token became ready"
    );
    let proxies: Value =
        serde_json::from_str(&control.cli(&["status", "--json"]).await).expect("status JSON");
    let intruders = proxies
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["node_id"] == "mesh/m/virtualNode/intruder")
        .count();
    assert!(
        intruders <= 1,
        "a stolen token opened a second stream: {proxies}"
    );
    drop((sidecar_c, control));
}

/// Per-hop App Mesh series of a sidecar, by family and peer labels.
async fn peer_count(p: &ProxyProcess, family: &str, labels: &[(&str, &str)]) -> f64 {
    let text = p.admin_get("/stats/prometheus").await.body_text();
    trellis_tests::metrics::series(&text, family, labels).unwrap_or(0.0)
}

#[tokio::test]
async fn both_hops_name_each_other_in_their_metrics() {
    let proxy = workspace_bin("trellis-proxy");
    let control = Control::start().await;
    let blue = Echo::start("blue").await;
    let (a, b) = ((free_port(), free_port()), (free_port(), free_port()));
    control
        .apply(&[
            json!({"meshName": "m", "spec": {}}),
            node("blue", blue.addr.port(), &[], true),
            node("client", 9, &["color"], false),
            service("color", "blue"),
        ])
        .await;
    let sidecar_b = sidecar(&proxy, &bootstrap(&control, "blue", b, false).await).await;
    let sidecar_a = sidecar(&proxy, &bootstrap(&control, "client", a, false).await).await;
    eventually(Duration::from_secs(15), "blue over mTLS", || async {
        (upstream(a.1, "color").await.as_deref() == Some("blue")).then_some(())
    })
    .await;

    let own_a = [("appmesh_mesh", "m"), ("appmesh_virtual_node", "client")];
    let target = [
        own_a[0],
        own_a[1],
        ("appmesh_target_virtual_service", "color"),
        ("appmesh_target_virtual_node", "blue"),
    ];
    let caller = [
        ("appmesh_mesh", "m"),
        ("appmesh_virtual_node", "blue"),
        ("appmesh_downstream_mesh", "m"),
        ("appmesh_downstream_virtual_node", "client"),
    ];
    let five = |l: &[(&'static str, &'static str)]| {
        let mut l = l.to_vec();
        l.push(("envoy_response_code_class", "5"));
        l
    };
    let count = || async {
        (
            peer_count(&sidecar_a, "envoy_appmesh_upstream_rq_total", &target).await,
            peer_count(&sidecar_a, "envoy_appmesh_upstream_rq_xx", &five(&target)).await,
            peer_count(&sidecar_b, "envoy_appmesh_downstream_rq_total", &caller).await,
            peer_count(&sidecar_b, "envoy_appmesh_downstream_rq_xx", &five(&caller)).await,
        )
    };
    let before = count().await;
    for path in ["/a", "/b", "/c", "/d", "/e", "/status/503", "/status/503"] {
        let r = client::request(
            Method::GET,
            &format!("http://127.0.0.1:{}{path}", a.1),
            &[("host", "color")],
            "",
        )
        .await
        .expect("request through both sidecars");
        assert_eq!(
            r.status,
            if path.starts_with("/status") {
                503
            } else {
                200
            }
        );
    }
    let after = count().await;
    assert_eq!(
        (
            after.0 - before.0,
            after.1 - before.1,
            after.2 - before.2,
            after.3 - before.3
        ),
        (7.0, 2.0, 7.0, 2.0),
        "A counts 7 requests to color/blue, B 7 from client; 2 of them 5xx"
    );
    for p in [&sidecar_a, &sidecar_b] {
        let text = p.admin_get("/stats/prometheus").await.body_text();
        let findings = trellis_tests::metrics::promtool_findings(&text);
        assert!(findings.is_empty(), "promtool: {findings:#?}");
    }
    drop((sidecar_a, sidecar_b, control));
}
