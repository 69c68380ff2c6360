//! The mesh end to end: trellis-control serving the App Mesh API and ADS,
//! two sidecars bootstrapped by `trellis-control bootstrap`, two echo apps.
//!
//! Node `client` (sidecar A) calls virtual service `color`, a virtual router
//! splitting between node `blue` (sidecar B in front of app blue, found
//! through the instance sidecar B registered by connecting) and node `red`
//! (app red, registered by hand through `/trellis/v1/instances`). Traffic:
//! client → sidecar A egress → sidecar B ingress → app blue, or → app red.
//! Changing the route's weights through the API must move traffic within
//! two seconds. Run once with trellis-proxy and once with stock Envoy.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Value};
use tokio::process::Command;
use trellis_tests::control::Control;
use trellis_tests::process::{require_envoy, workspace_bin, ProxyProcess};
use trellis_tests::upstream::Echo;
use trellis_tests::{client, eventually, free_port, within};

/// `kind` is `--virtual-node` or `--virtual-gateway`; `delta` asks for
/// incremental xDS. The bootstrap connects to xDS over TLS, trusting the CA
/// bundle `bootstrap` fetched from the API.
async fn bootstrap(
    control: &Control,
    kind_node: (&str, &str),
    ports: (u16, u16),
    delta: bool,
) -> String {
    let extra: &[&str] = if delta { &["--delta"] } else { &[] };
    let config = control.bootstrap(kind_node, ports, extra).await;
    assert!(config.contains("UpstreamTlsContext"), "{config}");
    config
}

fn route(blue: u32, red: u32, blue_port: u16, red_port: u16) -> Value {
    json!({"meshName": "m", "virtualRouterName": "color-router", "routeName": "split", "spec": {
        "httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": [
            {"virtualNode": "blue", "weight": blue, "port": blue_port},
            {"virtualNode": "red", "weight": red, "port": red_port}
        ]}}
    }})
}

/// Which app answered a request through sidecar A, if one did.
async fn color(egress: u16) -> Option<String> {
    let r = client::request(
        Method::GET,
        &format!("http://127.0.0.1:{egress}/hello"),
        &[("host", "color")],
        "",
    )
    .await
    .ok()?;
    (r.status == 200).then(|| r.echoed()["upstream"].as_str().unwrap_or("").to_string())
}

async fn scenario(proxy: PathBuf, delta: bool) {
    let control = Control::start().await;
    let blue = Echo::start("blue").await;
    let red = Echo::start("red").await;
    let (blue_port, red_port) = (blue.addr.port(), red.addr.port());
    let node = |name: &str, port: u16, backends: Value| {
        json!({"meshName": "m", "virtualNodeName": name, "spec": {
            "listeners": [{"portMapping": {"port": port, "protocol": "http"}}],
            "backends": backends,
        }})
    };
    control
        .apply(&[
            json!({"meshName": "m", "spec": {"egressFilter": {"type": "DROP_ALL"}}}),
            node(
                "client",
                9,
                json!([{"virtualService": {"virtualServiceName": "color"}}]),
            ),
            node("blue", blue_port, json!([])),
            node("red", red_port, json!([])),
            json!({"meshName": "m", "virtualRouterName": "color-router", "spec": {
                "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}),
            route(100, 0, blue_port, red_port),
            json!({"meshName": "m", "virtualServiceName": "color", "spec": {
                "provider": {"virtualRouter": {"virtualRouterName": "color-router"}}}}),
        ])
        .await;
    // App red has no sidecar: registered by hand, signed like any API call.
    let url = format!("http://{}/trellis/v1/instances", control.api);
    let reply = client::request(
        Method::POST,
        &url,
        &[],
        &json!({"meshName": "m", "virtualNodeName": "red", "address": "127.0.0.1", "port": red_port})
            .to_string(),
    )
    .await
    .expect("API answers");
    assert_eq!(
        reply.status, 403,
        "unsigned instance registration must be refused"
    );
    register_signed(&control, red_port).await;

    let (a_in, a_out, b_in, b_out) = (free_port(), free_port(), free_port(), free_port());
    let sidecar_b = ProxyProcess::start_with(
        &proxy,
        &bootstrap(&control, ("--virtual-node", "blue"), (b_in, b_out), delta).await,
        &[],
    )
    .await;
    let sidecar_a = ProxyProcess::start_with(
        &proxy,
        &bootstrap(&control, ("--virtual-node", "client"), (a_in, a_out), delta).await,
        &[],
    )
    .await;

    eventually(
        Duration::from_secs(10),
        "blue through both sidecars",
        || async { (color(a_out).await.as_deref() == Some("blue")).then_some(()) },
    )
    .await;
    assert!(blue.count() > 0);
    // Straight into sidecar B's ingress too.
    let r = client::get(&format!("http://127.0.0.1:{b_in}/direct"))
        .await
        .expect("sidecar B answers");
    assert_eq!(r.echoed()["upstream"], "blue");
    default_retries(a_out, &blue).await;

    // Shift everything to red: must show within 2 seconds of the write.
    control.apply(&[route(0, 100, blue_port, red_port)]).await;
    let written = Instant::now();
    eventually(Duration::from_secs(5), "traffic to move to red", || async {
        for _ in 0..5 {
            if color(a_out).await.as_deref() != Some("red") {
                return None;
            }
        }
        Some(())
    })
    .await;
    let took = written.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the split moved after {took:?}"
    );

    // Half and half: both colors show up.
    control.apply(&[route(50, 50, blue_port, red_port)]).await;
    eventually(Duration::from_secs(5), "both colors", || async {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            seen.insert(color(a_out).await?);
        }
        (seen.len() == 2).then_some(())
    })
    .await;

    // Both proxies ACKed everything they were sent, and NACKed nothing.
    let proxies = eventually(Duration::from_secs(5), "every update ACKed", || async {
        let proxies = control.proxies().await;
        let list = proxies.as_array()?.clone();
        (list.len() == 2 && all_synced(&proxies)).then_some(proxies)
    })
    .await;
    let nodes: Vec<&str> = proxies
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["node_id"].as_str())
        .collect();
    assert_eq!(
        nodes,
        ["mesh/m/virtualNode/blue", "mesh/m/virtualNode/client"]
    );
    let table = control.cli(&["status"]).await;
    assert!(table.contains("SYNCED"), "{table}");
    assert!(!table.contains("NACK"), "{table}");
    drop((sidecar_a, sidecar_b, control));
}

/// The route has no `retryPolicy`, so App Mesh's default applies: a 503 is
/// tried three times in all (two retries), a 500 once.
async fn default_retries(egress: u16, app: &Echo) {
    for (status, tries) in [(503, 3), (500, 1)] {
        let before = app.count();
        let r = client::request(
            Method::GET,
            &format!("http://127.0.0.1:{egress}/status/{status}"),
            &[("host", "color")],
            "",
        )
        .await
        .expect("sidecar A answers");
        assert_eq!(r.status, status);
        assert_eq!(
            app.count() - before,
            tries,
            "requests for one {status} answer"
        );
    }
}

/// Every proxy ACKed the last version of every type it was sent, and
/// NACKed nothing.
fn all_synced(proxies: &Value) -> bool {
    proxies.as_array().is_some_and(|list| {
        list.iter().all(|p| {
            p["types"].as_object().is_some_and(|types| {
                !types.is_empty()
                    && types
                        .values()
                        .all(|t| t["nack"].is_null() && t["sent"] == t["acked"])
            })
        })
    })
}

/// `POST /trellis/v1/instances`, signed, through the CLI.
async fn register_signed(control: &Control, red_port: u16) {
    let port = red_port.to_string();
    control
        .cli(&[
            "register-instance",
            "--mesh",
            "m",
            "--virtual-node",
            "red",
            "--address",
            "127.0.0.1",
            "--port",
            &port,
        ])
        .await;
}

#[tokio::test]
async fn mesh_with_trellis_proxy_sidecars() {
    let proxy = workspace_bin("trellis-proxy");
    within(
        Duration::from_secs(90),
        "the mesh scenario",
        scenario(proxy, false),
    )
    .await;
}

#[tokio::test]
async fn mesh_with_trellis_proxy_sidecars_over_delta_xds() {
    let proxy = workspace_bin("trellis-proxy");
    within(
        Duration::from_secs(90),
        "the delta mesh scenario",
        scenario(proxy, true),
    )
    .await;
}

#[tokio::test]
async fn mesh_with_stock_envoy_sidecars() {
    within(
        Duration::from_secs(90),
        "the mesh scenario on Envoy",
        scenario(require_envoy(), false),
    )
    .await;
}

#[tokio::test]
async fn mesh_with_stock_envoy_sidecars_over_delta_xds() {
    within(
        Duration::from_secs(90),
        "the delta mesh scenario on Envoy",
        scenario(require_envoy(), true),
    )
    .await;
}

/// A virtual gateway in front of a sidecar: `/color/` is matched, the
/// prefix rewritten to `/` and the Host to the target service's name.
async fn gateway(proxy: PathBuf) {
    let control = Control::start().await;
    let blue = Echo::start("blue").await;
    let gw_port = free_port();
    control
        .apply(&[
            json!({"meshName": "m", "spec": {}}),
            json!({"meshName": "m", "virtualNodeName": "blue", "spec": {
                "listeners": [{"portMapping": {"port": blue.addr.port(), "protocol": "http"}}]}}),
            json!({"meshName": "m", "virtualServiceName": "color", "spec": {
                "provider": {"virtualNode": {"virtualNodeName": "blue"}}}}),
            json!({"meshName": "m", "virtualGatewayName": "gw", "spec": {
                "listeners": [{"portMapping": {"port": gw_port, "protocol": "http"}}]}}),
            json!({"meshName": "m", "virtualGatewayName": "gw", "gatewayRouteName": "color", "spec": {
                "httpRoute": {"match": {"prefix": "/color/"},
                    "action": {"target": {"virtualService": {"virtualServiceName": "color"}}}}}}),
        ])
        .await;
    let sidecar = ProxyProcess::start_with(
        &proxy,
        &bootstrap(
            &control,
            ("--virtual-node", "blue"),
            (free_port(), free_port()),
            false,
        )
        .await,
        &[],
    )
    .await;
    let gw = ProxyProcess::start_with(
        &proxy,
        &bootstrap(
            &control,
            ("--virtual-gateway", "gw"),
            (free_port(), free_port()),
            false,
        )
        .await,
        &[],
    )
    .await;
    let url = format!("http://127.0.0.1:{gw_port}/color/paint?x=1");
    let echoed = eventually(Duration::from_secs(10), "the gateway to route", || {
        let url = url.clone();
        async move {
            let r = client::get(&url).await.ok()?;
            (r.status == 200).then(|| r.echoed())
        }
    })
    .await;
    assert_eq!(echoed["upstream"], "blue");
    assert_eq!(echoed["path"], "/paint?x=1");
    let host = echoed["headers"]["host"].as_str().unwrap_or_default();
    assert_eq!(host, "color");
    let r = client::get(&format!("http://127.0.0.1:{gw_port}/other"))
        .await
        .expect("the gateway answers");
    assert_eq!(r.status, 404);
    drop((gw, sidecar, control));
}

#[tokio::test]
async fn gateway_with_trellis_proxy() {
    let proxy = workspace_bin("trellis-proxy");
    within(
        Duration::from_secs(60),
        "the gateway scenario",
        gateway(proxy),
    )
    .await;
}

#[tokio::test]
async fn gateway_with_stock_envoy() {
    within(
        Duration::from_secs(60),
        "the gateway scenario on Envoy",
        gateway(require_envoy()),
    )
    .await;
}

/// An `http2` virtual node: sidecar A speaks HTTP/2 to sidecar B, which
/// speaks HTTP/2 to the app, as `typed_extension_protocol_options` ask.
async fn http2(proxy: PathBuf) {
    let control = Control::start().await;
    let app = Echo::start("h2").await;
    control
        .apply(&[
            json!({"meshName": "m", "spec": {}}),
            json!({"meshName": "m", "virtualNodeName": "client", "spec": {
                "backends": [{"virtualService": {"virtualServiceName": "h2"}}]}}),
            json!({"meshName": "m", "virtualNodeName": "server", "spec": {
                "listeners": [{"portMapping": {"port": app.addr.port(), "protocol": "http2"}}]}}),
            json!({"meshName": "m", "virtualServiceName": "h2", "spec": {
                "provider": {"virtualNode": {"virtualNodeName": "server"}}}}),
        ])
        .await;
    let egress = free_port();
    let mut proxies = Vec::new();
    for (node, ports) in [
        ("server", (free_port(), free_port())),
        ("client", (free_port(), egress)),
    ] {
        let config = bootstrap(&control, ("--virtual-node", node), ports, false).await;
        proxies.push(ProxyProcess::start_with(&proxy, &config, &[]).await);
    }
    let url = format!("http://127.0.0.1:{egress}/h2");
    let echoed = eventually(
        Duration::from_secs(10),
        "HTTP/2 through both sidecars",
        || {
            let url = url.clone();
            async move {
                let r = client::request(Method::GET, &url, &[("host", "h2")], "")
                    .await
                    .ok()?;
                (r.status == 200).then(|| r.echoed())
            }
        },
    )
    .await;
    assert_eq!(echoed["upstream"], "h2");
    assert_eq!(echoed["version"], "HTTP/2.0");
    drop((proxies, control));
}

#[tokio::test]
async fn http2_upstreams_with_trellis_proxy() {
    let proxy = workspace_bin("trellis-proxy");
    within(Duration::from_secs(60), "the HTTP/2 scenario", http2(proxy)).await;
}

#[tokio::test]
async fn http2_upstreams_with_stock_envoy() {
    within(
        Duration::from_secs(60),
        "the HTTP/2 scenario on Envoy",
        http2(require_envoy()),
    )
    .await;
}

/// An explicit-proxy request (absolute-form) for an app that is not in the
/// mesh, through the egress port: the status line.
async fn outside(egress: u16, app: &Echo) -> String {
    let addr = app.addr;
    let request =
        format!("GET http://{addr}/outside HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    // The listener comes with the first config: until then, no status.
    if tokio::net::TcpStream::connect(trellis_tests::loopback(egress))
        .await
        .is_err()
    {
        return String::new();
    }
    let reply = client::raw(
        trellis_tests::loopback(egress),
        request.as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    reply.lines().next().unwrap_or("").to_string()
}

/// curl through the egress port as an `https_proxy`: `-p` tunnels with
/// CONNECT. Success and what curl printed.
async fn tunneled(egress: u16, app: &Echo) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-p", "-x"])
        .arg(format!("http://127.0.0.1:{egress}"))
        .arg(format!("http://{}/tunneled", app.addr))
        .output()
        .await
        .unwrap_or_else(|e| panic!("curl: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Mesh `egressFilter`: with ALLOW_ALL a destination the mesh does not know
/// passes through the sidecar's egress listener (catch-all virtual host →
/// ORIGINAL_DST passthrough), as an absolute-form request or a CONNECT
/// tunnel; switching the mesh to DROP_ALL through the API closes it (404:
/// only the backend's virtual host is left), and back to ALLOW_ALL opens it
/// again.
async fn egress_filter(proxy: PathBuf) {
    let control = Control::start().await;
    let app = Echo::start("outside").await;
    let mesh = |filter: &str| json!({"meshName": "m", "spec": {"egressFilter": {"type": filter}}});
    control
        .apply(&[
            mesh("ALLOW_ALL"),
            json!({"meshName": "m", "virtualNodeName": "b", "spec": {
                "listeners": [{"portMapping": {"port": free_port(), "protocol": "http"}}]}}),
            json!({"meshName": "m", "virtualServiceName": "b.m.local", "spec": {
                "provider": {"virtualNode": {"virtualNodeName": "b"}}}}),
            json!({"meshName": "m", "virtualNodeName": "a", "spec": {
                "listeners": [{"portMapping": {"port": free_port(), "protocol": "http"}}],
                "backends": [{"virtualService": {"virtualServiceName": "b.m.local"}}]}}),
        ])
        .await;
    let (ingress, egress) = (free_port(), free_port());
    let config = bootstrap(&control, ("--virtual-node", "a"), (ingress, egress), false).await;
    let _sidecar = ProxyProcess::start_with(&proxy, &config, &[]).await;
    let passes = |want: &'static str| {
        let app = &app;
        move || async move { outside(egress, app).await.contains(want).then_some(()) }
    };
    eventually(
        Duration::from_secs(10),
        "ALLOW_ALL passes through",
        passes(" 200 "),
    )
    .await;
    assert!(
        app.count() > 0,
        "the request reached the app outside the mesh"
    );
    let before = app.count();
    let (ok, text) = tunneled(egress, &app).await;
    assert!(ok, "CONNECT through the sidecar: {text}");
    assert!(text.contains("/tunneled"), "the app answered: {text}");
    assert_eq!(app.count(), before + 1);
    control.apply(&[mesh("DROP_ALL")]).await;
    eventually(Duration::from_secs(10), "DROP_ALL refuses", passes(" 404 ")).await;
    let reached = app.count();
    assert!(outside(egress, &app).await.contains(" 404 "));
    let (ok, text) = tunneled(egress, &app).await;
    assert!(
        !ok && text.contains("404"),
        "no CONNECT under DROP_ALL: {text}"
    );
    assert_eq!(app.count(), reached, "nothing passes under DROP_ALL");
    control.apply(&[mesh("ALLOW_ALL")]).await;
    eventually(Duration::from_secs(10), "ALLOW_ALL again", passes(" 200 ")).await;
}

#[tokio::test]
async fn egress_filter_allow_all_with_trellis_proxy() {
    let proxy = workspace_bin("trellis-proxy");
    within(
        Duration::from_secs(60),
        "the egress filter scenario",
        egress_filter(proxy),
    )
    .await;
}

/// Every golden fixture of the translation, applied through the API and
/// served to a proxy per node and gateway: the proxy must ACK all of it.
async fn goldens_accepted(proxy: PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../control/tests/xds-golden");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("golden dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".input.json"))
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty());
    for input in inputs {
        let fixture: Value =
            serde_json::from_str(&std::fs::read_to_string(&input).expect("read fixture"))
                .expect("fixture JSON");
        let control = Control::start().await;
        let mut docs = Vec::new();
        let mut ids = Vec::new();
        for r in fixture["resources"].as_array().into_iter().flatten() {
            let kind = r["kind"].as_str().unwrap_or_default();
            let name = r["name"].clone();
            let mut doc = json!({"meshName": "m", "spec": r["spec"]});
            match kind {
                "Mesh" => {}
                "Route" => {
                    doc["virtualRouterName"] = r["parent"].clone();
                    doc["routeName"] = name;
                }
                "GatewayRoute" => {
                    doc["virtualGatewayName"] = r["parent"].clone();
                    doc["gatewayRouteName"] = name;
                }
                other => {
                    let field = format!("{}{}Name", other[..1].to_lowercase(), &other[1..]);
                    doc[field] = name.clone();
                    if other == "VirtualNode" {
                        ids.push(("--virtual-node", name.as_str().unwrap_or("").to_string()));
                    } else if other == "VirtualGateway" {
                        ids.push(("--virtual-gateway", name.as_str().unwrap_or("").to_string()));
                    }
                }
            }
            docs.push(doc);
        }
        control.apply(&docs).await;
        for i in fixture["instances"].as_array().into_iter().flatten() {
            let text = |k: &str| i[k].as_str().unwrap_or("").to_string();
            let mut args: Vec<String> = match i["namespace"].as_str() {
                Some(namespace) => vec![
                    "--namespace".into(),
                    namespace.into(),
                    "--service".into(),
                    text("service"),
                ],
                None => vec![
                    "--mesh".into(),
                    "m".into(),
                    "--virtual-node".into(),
                    text("node"),
                ],
            };
            for (k, v) in i["attributes"].as_object().into_iter().flatten() {
                args.push("--attribute".into());
                args.push(format!("{k}={}", v.as_str().unwrap_or("")));
            }
            args.extend(["--address".into(), text("address")]);
            args.extend(["--port".into(), i["port"].to_string()]);
            let args: Vec<&str> = std::iter::once("register-instance")
                .chain(args.iter().map(String::as_str))
                .collect();
            control.cli(&args).await;
        }
        let mut proxies = Vec::new();
        for (kind, name) in &ids {
            let config = bootstrap(
                &control,
                (kind, name.as_str()),
                (free_port(), free_port()),
                false,
            )
            .await;
            proxies.push(ProxyProcess::start_with(&proxy, &config, &[]).await);
        }
        let what = format!("{} ACKed by every proxy", input.display());
        eventually(Duration::from_secs(10), &what, || async {
            let status = control.proxies().await;
            let n = status.as_array().map_or(0, Vec::len);
            (n == ids.len() && all_synced(&status)).then_some(())
        })
        .await;
        drop(proxies);
    }
}

#[tokio::test]
async fn golden_configs_are_accepted_by_trellis_proxy() {
    let proxy = workspace_bin("trellis-proxy");
    within(
        Duration::from_secs(120),
        "the goldens on trellis-proxy",
        goldens_accepted(proxy),
    )
    .await;
}

#[tokio::test]
async fn golden_configs_are_accepted_by_envoy() {
    within(
        Duration::from_secs(120),
        "the goldens on Envoy",
        goldens_accepted(require_envoy()),
    )
    .await;
}

#[tokio::test]
async fn bootstraps_validate_in_trellis_proxy_and_envoy() {
    let control = workspace_bin("trellis-control");
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = trellis_tests::tls::Ca::new("xDS CA");
    let ca_file = ca.write(dir.path(), "xds-ca");
    let ca_file = ca_file.to_string_lossy();
    // Offline (no API): a given token, or none.
    let cases: [&[&str]; 4] = [
        &[
            "--virtual-node",
            "a",
            "--xds-ca",
            &ca_file,
            "--token",
            "t0ken",
        ],
        &[
            "--no-token",
            "--virtual-gateway",
            "g",
            "--xds-addr",
            "localhost:18000",
            "--admin-port",
            "9902",
            "--xds-ca",
            &ca_file,
        ],
        &[
            "--virtual-node",
            "b",
            "--delta",
            "--ingress-port",
            "20000",
            "--egress-port",
            "20001",
            "--xds-ca",
            &ca_file,
            "--token",
            "t0ken",
        ],
        &["--virtual-node", "c", "--xds-plaintext", "--no-token"],
    ];
    for (i, extra) in cases.iter().enumerate() {
        let out = std::process::Command::new(&control)
            .args(["bootstrap", "--mesh", "m"])
            .args(*extra)
            .output()
            .expect("run bootstrap");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.contains("UpstreamTlsContext"),
            !extra.contains(&"--xds-plaintext"),
            "{text}"
        );
        let path = dir.path().join(format!("b{i}.yaml"));
        std::fs::write(&path, &out.stdout).expect("write bootstrap");
        let path = path.to_string_lossy().into_owned();
        for bin in [workspace_bin("trellis-proxy"), require_envoy()] {
            let mut args = vec!["--mode", "validate", "-c", path.as_str()];
            let base_id = free_port().to_string();
            if bin.ends_with("envoy") {
                args.extend(["--base-id", base_id.as_str()]);
            }
            let out = tokio::time::timeout(
                Duration::from_secs(60),
                Command::new(&bin).args(&args).stdin(Stdio::null()).output(),
            )
            .await
            .expect("validation finishes")
            .expect("validator runs");
            assert!(
                out.status.success(),
                "{} refused {extra:?}: {}",
                bin.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // A file without a certificate is refused, naming the flag and the file.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("write");
    let out = std::process::Command::new(&control)
        .args([
            "bootstrap",
            "--mesh",
            "m",
            "--virtual-node",
            "a",
            "--xds-ca",
        ])
        .arg(&empty)
        .output()
        .expect("run bootstrap");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--xds-ca") && stderr.contains("empty.pem"),
        "{stderr}"
    );
}
