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
use tokio::process::{Child, Command};
use trellis_tests::process::{require_envoy, workspace_bin, ProxyProcess};
use trellis_tests::upstream::Echo;
use trellis_tests::{client, eventually, free_port, within};

const CREDENTIALS: &str =
    "[default]\naws_access_key_id = AKIDMESHE2E\naws_secret_access_key = mesh-e2e-secret\n";

struct Control {
    /// Held so that the server is killed when the test ends.
    _child: Child,
    api: String,
    xds: String,
    dir: tempfile::TempDir,
}

impl Control {
    async fn start() -> Control {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("credentials"), CREDENTIALS).expect("credentials");
        let api = format!("127.0.0.1:{}", free_port());
        let xds = format!("127.0.0.1:{}", free_port());
        let child = Command::new(workspace_bin("trellis-control"))
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--credentials")
            .arg(dir.path().join("credentials"))
            .args(["--api-addr", &api, "--xds-addr", &xds])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn trellis-control");
        let url = format!("http://{api}/");
        eventually(Duration::from_secs(20), "the API to answer", || {
            let url = url.clone();
            async move { client::get(&url).await.ok().map(|_| ()) }
        })
        .await;
        Control {
            _child: child,
            api,
            xds,
            dir,
        }
    }

    fn credentials(&self) -> PathBuf {
        self.dir.path().join("credentials")
    }

    /// `trellis-control ARGS` against this server, its stdout on success.
    async fn cli(&self, args: &[&str]) -> String {
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            Command::new(workspace_bin("trellis-control"))
                .args(args)
                .args(["--api-addr", &self.api])
                .arg("--credentials")
                .arg(self.credentials())
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .expect("trellis-control exits in time")
        .expect("trellis-control runs");
        assert!(
            out.status.success(),
            "trellis-control {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes CLI input JSON documents into a folder and applies it.
    async fn apply(&self, docs: &[Value]) {
        let dir = tempfile::tempdir_in(self.dir.path()).expect("temp dir");
        for (i, doc) in docs.iter().enumerate() {
            std::fs::write(dir.path().join(format!("{i:02}.json")), doc.to_string())
                .expect("write spec");
        }
        let path = dir.path().to_string_lossy().into_owned();
        self.cli(&["apply", "-f", &path]).await;
    }

    async fn proxies(&self) -> Value {
        serde_json::from_str(&self.cli(&["status", "--json"]).await).expect("status JSON")
    }
}

fn bootstrap(bin: &Path, xds: &str, node: &str, ingress: u16, egress: u16) -> String {
    let out = std::process::Command::new(bin)
        .args([
            "bootstrap",
            "--mesh",
            "m",
            "--virtual-node",
            node,
            "--xds-addr",
            xds,
        ])
        .args(["--admin-port", "0", "--listener-address", "127.0.0.1"])
        .args(["--ingress-port", &ingress.to_string()])
        .args(["--egress-port", &egress.to_string()])
        .output()
        .expect("run bootstrap");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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

async fn scenario(proxy: PathBuf) {
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

    let control_bin = workspace_bin("trellis-control");
    let (a_in, a_out, b_in, b_out) = (free_port(), free_port(), free_port(), free_port());
    let sidecar_b = ProxyProcess::start_with(
        &proxy,
        &bootstrap(&control_bin, &control.xds, "blue", b_in, b_out),
        &[],
    )
    .await;
    let sidecar_a = ProxyProcess::start_with(
        &proxy,
        &bootstrap(&control_bin, &control.xds, "client", a_in, a_out),
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
        let synced = list.len() == 2
            && list.iter().all(|p| {
                p["types"].as_object().is_some_and(|types| {
                    !types.is_empty()
                        && types
                            .values()
                            .all(|t| t["nack"].is_null() && t["sent"] == t["acked"])
                })
            });
        synced.then_some(proxies)
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
    within(
        Duration::from_secs(90),
        "the mesh scenario",
        scenario(workspace_bin("trellis-proxy")),
    )
    .await;
}

#[tokio::test]
async fn mesh_with_stock_envoy_sidecars() {
    within(
        Duration::from_secs(90),
        "the mesh scenario on Envoy",
        scenario(require_envoy()),
    )
    .await;
}

#[tokio::test]
async fn bootstraps_validate_in_trellis_proxy_and_envoy() {
    let control = workspace_bin("trellis-control");
    let dir = tempfile::tempdir().expect("temp dir");
    let cases: [&[&str]; 3] = [
        &["--virtual-node", "a"],
        &[
            "--virtual-gateway",
            "g",
            "--xds-addr",
            "localhost:18000",
            "--admin-port",
            "9902",
        ],
        &[
            "--virtual-node",
            "b",
            "--delta",
            "--ingress-port",
            "20000",
            "--egress-port",
            "20001",
        ],
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
}
