//! The App Mesh API end to end: the real binary, real HTTP, signed requests.

mod support;

use std::process::Command;
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use support::{Server, BIN};
use trellis_control::api::credentials::Credentials;
use trellis_control::api::sigv4::{self, Unsigned};
use trellis_control::ErrorKind;

fn vn_spec(port: u16) -> Value {
    json!({"listeners": [{"portMapping": {"port": port, "protocol": "http"}}],
           "serviceDiscovery": {"dns": {"hostname": "svc.local"}}})
}

async fn raw_get(server: &Server, path: &str, sign: bool) -> (u16, Option<String>, Value) {
    let http = HyperClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let authority = server.addr.to_string();
    let mut req = http::Request::get(format!("http://{authority}{path}"))
        .header("host", &authority)
        .body(Full::new(Bytes::new()))
        .expect("request");
    if sign {
        let creds = Credentials::load(&server.data_dir.join("credentials")).expect("creds");
        let unsigned = Unsigned {
            method: "GET",
            raw_path: path,
            raw_query: "",
            body: b"",
        };
        sigv4::sign(
            &unsigned,
            req.headers_mut(),
            creds.preferred(),
            "us-west-2",
            SystemTime::now(),
        )
        .expect("sign");
    }
    let resp = http.request(req).await.expect("response");
    let status = resp.status().as_u16();
    let kind = resp
        .headers()
        .get("x-amzn-errortype")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        kind,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn resources_live_through_their_whole_lifecycle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"), &[]);
    let c = server.client();
    let mesh = c
        .call("CreateMesh", &json!({"meshName": "shop"}))
        .await
        .expect("mesh");
    assert_eq!(
        mesh["mesh"]["metadata"]["arn"],
        "arn:aws:appmesh:us-west-2:000000000000:mesh/shop"
    );
    assert_eq!(mesh["mesh"]["status"]["status"], "ACTIVE");
    for name in ["a", "b", "c"] {
        c.call(
            "CreateVirtualNode",
            &json!({"meshName": "shop", "virtualNodeName": name, "spec": vn_spec(80)}),
        )
        .await
        .expect("vn");
    }
    c.call(
        "CreateVirtualRouter",
        &json!({"meshName": "shop", "virtualRouterName": "r",
                "spec": {"listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}),
    )
    .await
    .expect("router");
    let route_spec = json!({"httpRoute": {"match": {"prefix": "/"},
        "action": {"weightedTargets": [{"virtualNode": "a", "weight": 1}]}}});
    c.call(
        "CreateRoute",
        &json!({"meshName": "shop", "virtualRouterName": "r", "routeName": "all", "spec": route_spec}),
    )
    .await
    .expect("route");
    let updated = c
        .call(
            "UpdateRoute",
            &json!({"meshName": "shop", "virtualRouterName": "r", "routeName": "all",
                    "spec": {"httpRoute": {"match": {"prefix": "/"},
                      "action": {"weightedTargets": [{"virtualNode": "b", "weight": 1}]}}}}),
        )
        .await
        .expect("update");
    assert_eq!(updated["route"]["metadata"]["version"], 2);

    let page = c
        .call("ListVirtualNodes", &json!({"meshName": "shop", "limit": 2}))
        .await
        .expect("list");
    assert_eq!(page["virtualNodes"].as_array().map(Vec::len), Some(2));
    let token = page["nextToken"].as_str().expect("a next page").to_string();
    let rest = c
        .call(
            "ListVirtualNodes",
            &json!({"meshName": "shop", "limit": 2, "nextToken": token}),
        )
        .await
        .expect("page 2");
    assert_eq!(rest["virtualNodes"][0]["virtualNodeName"], "c");
    assert!(rest.get("nextToken").is_none());

    let err = c
        .call(
            "DeleteVirtualNode",
            &json!({"meshName": "shop", "virtualNodeName": "b"}),
        )
        .await
        .expect_err("b is a route target");
    assert_eq!(err.kind, ErrorKind::ResourceInUse);
    let err = c
        .call("DeleteMesh", &json!({"meshName": "shop"}))
        .await
        .expect_err("mesh in use");
    assert_eq!(err.kind, ErrorKind::ResourceInUse);
    let err = c
        .call(
            "CreateRoute",
            &json!({"meshName": "shop", "virtualRouterName": "r", "routeName": "x",
                    "spec": {"tcpRoute": {"action": {"weightedTargets": [{"virtualNode": "ghost", "weight": 1}]}}}}),
        )
        .await
        .expect_err("ghost target");
    assert_eq!(err.kind, ErrorKind::NotFound);
    let err = c
        .call(
            "CreateVirtualNode",
            &json!({"meshName": "shop", "virtualNodeName": "bad", "spec": vn_spec(0)}),
        )
        .await
        .expect_err("port 0");
    assert_eq!(err.kind, ErrorKind::BadRequest);
    assert!(
        err.message.contains("spec.listeners[0].portMapping.port"),
        "{}",
        err.message
    );

    let deleted = c
        .call(
            "DeleteRoute",
            &json!({"meshName": "shop", "virtualRouterName": "r", "routeName": "all"}),
        )
        .await
        .expect("delete route");
    assert_eq!(deleted["route"]["status"]["status"], "DELETED");
    c.call(
        "DeleteVirtualRouter",
        &json!({"meshName": "shop", "virtualRouterName": "r"}),
    )
    .await
    .expect("delete router");
    for name in ["a", "b", "c"] {
        c.call(
            "DeleteVirtualNode",
            &json!({"meshName": "shop", "virtualNodeName": name}),
        )
        .await
        .expect("delete vn");
    }
    c.call("DeleteMesh", &json!({"meshName": "shop"}))
        .await
        .expect("delete mesh");
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_requests_are_refused_and_signed_ones_reach_trellis_endpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"), &[]);
    let (status, kind, _) = raw_get(&server, "/v20190125/meshes", false).await;
    assert_eq!((status, kind.as_deref()), (403, Some("ForbiddenException")));
    let (status, _, body) = raw_get(&server, "/trellis/v1/proxies", true).await;
    assert_eq!((status, body), (200, json!([])));
    let (status, kind, _) = raw_get(&server, "/trellis/v1/proxies", false).await;
    assert_eq!((status, kind.as_deref()), (403, Some("ForbiddenException")));
}

#[tokio::test(flavor = "multi_thread")]
async fn state_survives_a_graceful_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    server
        .client()
        .call(
            "CreateMesh",
            &json!({"meshName": "kept", "tags": [{"key": "team", "value": "a"}]}),
        )
        .await
        .expect("create");
    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
    let server = Server::start(&data, &[]);
    let mesh = server
        .client()
        .call("DescribeMesh", &json!({"meshName": "kept"}))
        .await
        .expect("still there");
    assert_eq!(mesh["mesh"]["metadata"]["version"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_and_load_go_through_the_same_checks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("app.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: appmesh.k8s.aws/v1beta2\nkind: Mesh\nmetadata: {name: demo}\nspec: {}\n---\n\
         apiVersion: appmesh.k8s.aws/v1beta2\nkind: VirtualNode\nmetadata: {name: web, namespace: prod}\n\
         spec:\n  listeners: [{portMapping: {port: 8080, protocol: http}}]\n  serviceDiscovery: {dns: {hostname: web.prod}}\n",
    )
    .expect("write manifest");
    let loaded = Server::start(
        &dir.path().join("loaded"),
        &["--load", manifest.to_str().expect("utf-8")],
    );
    loaded
        .client()
        .call(
            "DescribeVirtualNode",
            &json!({"meshName": "demo", "virtualNodeName": "web_prod"}),
        )
        .await
        .expect("loaded at start");

    let server = Server::start(&dir.path().join("applied"), &[]);
    let run = |file: &std::path::Path| {
        Command::new(BIN)
            .args(["apply", "-f"])
            .arg(file)
            .arg("--api-addr")
            .arg(server.addr.to_string())
            .arg("--data-dir")
            .arg(&server.data_dir)
            .output()
            .expect("run apply")
    };
    let out = run(&manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("VirtualNode web_prod created"));
    let again = run(&manifest);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        stdout.contains("Mesh demo unchanged") && stdout.contains("VirtualNode web_prod unchanged"),
        "{stdout}"
    );
    server
        .client()
        .call(
            "DescribeVirtualNode",
            &json!({"meshName": "demo", "virtualNodeName": "web_prod"}),
        )
        .await
        .expect("applied");
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"meshName": "demo", "virtualNodeName": "x", "spec": {"listeners": [{"portMapping": {"port": 99999, "protocol": "http"}}]}}"#,
    )
    .expect("write bad");
    let out = run(&bad);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a refused document is a bad file"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.json: document 1 (VirtualNode x)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("spec.listeners[0].portMapping.port"),
        "{stderr}"
    );

    // A rule of App Mesh's that the model cannot state, in an inline route
    // of a Kubernetes VirtualRouter: refused with the route's field.
    let router = dir.path().join("router.yaml");
    std::fs::write(
        &router,
        "apiVersion: appmesh.k8s.aws/v1beta2\nkind: VirtualRouter\nmetadata: {name: rpc, namespace: prod}\n\
         spec:\n  meshRef: {name: demo}\n  listeners: [{portMapping: {port: 9090, protocol: grpc}}]\n  routes:\n\
         \x20 - name: get\n    grpcRoute:\n      match: {methodName: Get}\n\
         \x20     action: {weightedTargets: [{virtualNodeRef: {name: web}, weight: 1}]}\n",
    )
    .expect("write router");
    let out = run(&router);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("router.yaml: document 1 (Route get)")
            && stderr.contains("spec.grpcRoute.match.methodName: needs serviceName"),
        "{stderr}"
    );
    let routes = server
        .client()
        .call(
            "ListRoutes",
            &json!({"meshName": "demo", "virtualRouterName": "rpc_prod"}),
        )
        .await
        .expect("the router itself was applied");
    assert_eq!(routes["routes"], json!([]));
}

#[test]
fn bad_flags_and_unsafe_no_auth_exit_2_with_one_line() {
    let out = Command::new(BIN)
        .args(["serve", "--bogus"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args([
            "serve",
            "--no-auth",
            "--api-addr",
            "0.0.0.0:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--no-auth is refused"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    // Clear-text xDS, like unsigned API calls, only where no one else listens.
    let out = Command::new(BIN)
        .args([
            "serve",
            "--xds-plaintext",
            "--xds-addr",
            "0.0.0.0:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--xds-plaintext is refused"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// The operator's CA: SVIDs chain to it, `GET /trellis/v1/ca` serves it as
/// the bundle (with `--ca-trust` certificates after it); unusable files
/// exit 2 naming the file.
#[tokio::test(flavor = "multi_thread")]
async fn operator_ca_and_extra_trust() {
    use trellis_control::ca::Ca;
    let dir = tempfile::tempdir().expect("tempdir");
    let ttl = std::time::Duration::from_secs(3600);
    let (ops, _) = Ca::load_or_create(&dir.path().join("ops"), "trellis.local", ttl).expect("ca");
    let (next, _) = Ca::load_or_create(&dir.path().join("next"), "trellis.local", ttl).expect("ca");
    let arg = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    let (cert, key) = (
        arg(dir.path().join("ops/ca.pem")),
        arg(dir.path().join("ops/ca-key.pem")),
    );
    let next_cert = arg(dir.path().join("next/ca.pem"));
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--ca-cert",
            &cert,
            "--ca-key",
            &key,
            "--ca-trust",
            &next_cert,
        ],
    );
    let (status, _, body) = raw_get(&server, "/trellis/v1/ca", true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["xdsTls"], "mesh");
    assert_eq!(body["trustDomain"], "trellis.local");
    let bundle = body["bundle"].as_str().expect("bundle");
    assert!(bundle.starts_with(ops.bundle_pem()), "{bundle}");
    assert!(bundle.ends_with(next.bundle_pem()), "{bundle}");
    assert!(!bundle.contains("PRIVATE KEY"));
    assert!(
        !server.data_dir.join("ca").exists(),
        "no CA of its own is made when the operator gives one"
    );
    let (status, _, _) = raw_get(&server, "/trellis/v1/ca", false).await;
    assert_eq!(status, 403, "unsigned");
    drop(server);
    // A key that is not the certificate's, and a trust file that is not a CA.
    let issued = ops.issue_server(&["127.0.0.1".into()], ttl).expect("leaf");
    let (leaf, leaf_key) = (dir.path().join("leaf.pem"), dir.path().join("leaf-key.pem"));
    std::fs::write(&leaf, &issued.cert_pem).expect("write");
    std::fs::write(&leaf_key, &issued.key_pem).expect("write");
    let (leaf, leaf_key) = (arg(leaf), arg(leaf_key));
    let next_key = arg(dir.path().join("next/ca-key.pem"));
    for (flags, named) in [
        (
            vec!["--ca-cert", &cert, "--ca-key", &next_key],
            "ca-key.pem",
        ),
        (vec!["--ca-trust", &leaf], "leaf.pem"),
        // The injector cannot tell sidecars which CA an operator's xDS
        // certificate chains to.
        (
            vec![
                "--xds-tls-cert",
                &leaf,
                "--xds-tls-key",
                &leaf_key,
                "--webhook-addr",
                "127.0.0.1:0",
            ],
            "--sidecar-xds-ca",
        ),
    ] {
        // A server that accepted them would run on: time out instead.
        let run = tokio::process::Command::new(BIN)
            .arg("serve")
            .args(&flags)
            .args([
                "--api-addr",
                "127.0.0.1:0",
                "--xds-addr",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir.path().join("bad"))
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(std::time::Duration::from_secs(20), run)
            .await
            .unwrap_or_else(|_| panic!("{flags:?} accepted"))
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(named), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_auth_on_loopback_accepts_unsigned_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"), &["--no-auth"]);
    let (status, kind, body) = raw_get(&server, "/v20190125/meshes", false).await;
    assert_eq!((status, kind), (200, None));
    assert_eq!(body, json!({"meshes": []}));
    assert!(
        !server.data_dir.join("credentials").exists(),
        "no key pair is minted when nobody needs one"
    );
}

/// Listener TLS in a spec: a `file` certificate names paths (read by the
/// proxy, which NACKs bad files naming the field), so the API checks its
/// shape: a missing field is a 400 naming it, and `acm` is refused.
#[tokio::test(flavor = "multi_thread")]
async fn listener_tls_specs_are_checked_by_the_api() {
    use trellis_control::error::ErrorKind;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"), &[]);
    let c = server.client();
    c.call("CreateMesh", &json!({"meshName": "m"}))
        .await
        .expect("mesh");
    let node = |name: &str, certificate: Value| {
        json!({"meshName": "m", "virtualNodeName": name, "spec": {"listeners": [{
            "portMapping": {"port": 80, "protocol": "http"},
            "tls": {"mode": "STRICT", "certificate": certificate}}]}})
    };
    let e = c
        .call(
            "CreateVirtualNode",
            &node("a", json!({"file": {"certificateChain": "/certs/a.pem"}})),
        )
        .await
        .expect_err("no private key");
    assert_eq!(e.kind, ErrorKind::BadRequest, "{e:?}");
    assert!(e.message.contains("privateKey"), "{}", e.message);
    let e = c
        .call(
            "CreateVirtualNode",
            &node("a", json!({"acm": {"certificateArn": "arn:aws:acm:x"}})),
        )
        .await
        .expect_err("acm");
    assert_eq!(e.kind, ErrorKind::BadRequest, "{e:?}");
    assert!(
        e.message.contains("not available outside AWS"),
        "{}",
        e.message
    );
    let ok = c
        .call(
            "CreateVirtualNode",
            &node(
                "a",
                json!({"file": {"certificateChain": "/certs/a.pem", "privateKey": "/certs/a.key"}}),
            ),
        )
        .await
        .expect("a file certificate");
    assert_eq!(
        ok["virtualNode"]["spec"]["listeners"][0]["tls"]["certificate"]["file"]["privateKey"],
        "/certs/a.key"
    );
}

/// With no `--credentials`, `serve` accepts the key pair in
/// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (and writes no credentials
/// file); any other key is refused, and client commands sign with the same
/// variables. `--credentials` wins over the environment; half a key pair in
/// the environment exits 2 naming the missing variable.
#[tokio::test(flavor = "multi_thread")]
async fn keys_from_the_environment_rank_after_the_flag() {
    use trellis_control::api::client::Client;
    use trellis_control::api::credentials::KeyPair;
    const ID: &str = "AKIAENVIRONMENT00001";
    const SECRET: &str = "environment-secret-0000000000000000000000";
    let env = [("AWS_ACCESS_KEY_ID", ID), ("AWS_SECRET_ACCESS_KEY", SECRET)];
    let key = |id: &str, secret: &str| KeyPair {
        profile: "test".into(),
        access_key_id: id.into(),
        secret_access_key: secret.into(),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start_with_env(&data, &[], &env);
    let client = |k: KeyPair| Client::new(server.addr.to_string(), k, "us-west-2".into());
    client(key(ID, SECRET))
        .call("CreateMesh", &json!({"meshName": "env"}))
        .await
        .expect("the environment's key is accepted");
    let other = client(key("AKIAOTHERKEY00000001", SECRET))
        .call("ListMeshes", &json!({}))
        .await
        .expect_err("another key is refused");
    assert_eq!(other.kind, ErrorKind::UnrecognizedClient);
    let wrong = client(key(ID, "not-the-secret"))
        .call("ListMeshes", &json!({}))
        .await
        .expect_err("a wrong secret is refused");
    assert_eq!(wrong.kind, ErrorKind::InvalidSignature);
    assert!(
        !data.join("credentials").exists(),
        "no credentials file is written when the environment has the key pair"
    );
    let status = |env: &[(&str, &str)]| {
        Command::new(BIN)
            .args(["status", "--json", "--api-addr", &server.addr.to_string()])
            .arg("--data-dir")
            .arg(&data)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .envs(env.iter().copied())
            .output()
            .expect("run status")
    };
    let signed = status(&env);
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    assert_eq!(status(&[]).status.code(), Some(2), "no key pair at all");
    drop(server);

    let file = dir.path().join("operator-credentials");
    std::fs::write(
        &file,
        "[default]\naws_access_key_id = AKIAFILEKEY000000001\naws_secret_access_key = file-secret\n",
    )
    .expect("write credentials");
    let flagged = Server::start_with_env(
        &dir.path().join("flagged"),
        &["--credentials", file.to_str().expect("utf-8 path")],
        &env,
    );
    let client = |k: KeyPair| Client::new(flagged.addr.to_string(), k, "us-west-2".into());
    client(key("AKIAFILEKEY000000001", "file-secret"))
        .call("ListMeshes", &json!({}))
        .await
        .expect("the file's key is accepted");
    let env_key = client(key(ID, SECRET))
        .call("ListMeshes", &json!({}))
        .await
        .expect_err("the environment's key is not, under --credentials");
    assert_eq!(env_key.kind, ErrorKind::UnrecognizedClient);
    drop(flagged);

    let half = Command::new(BIN)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("half"))
        .args(["--api-addr", &support::free_addr().to_string()])
        .args(["--xds-addr", &support::free_addr().to_string()])
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_ACCESS_KEY_ID", ID)
        .output()
        .expect("run serve");
    assert_eq!(half.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&half.stderr);
    assert!(stderr.contains("AWS_SECRET_ACCESS_KEY"), "{stderr}");
}

/// `serve --load` of a file with a bad document exits 2 before serving,
/// naming the file, the document and the field, as `apply` does.
#[test]
fn serve_load_of_a_bad_document_exits_2_naming_file_document_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("mesh.yaml");
    std::fs::write(
        &file,
        "apiVersion: appmesh.k8s.aws/v1beta2\nkind: Mesh\nmetadata: {name: demo}\nspec: {}\n---\n\
         apiVersion: appmesh.k8s.aws/v1beta2\nkind: VirtualNode\nmetadata: {name: web, namespace: prod}\n\
         spec:\n  listeners: [{portMapping: {port: 99999, protocol: http}}]\n",
    )
    .expect("write manifest");
    let syntax = dir.path().join("broken.yaml");
    std::fs::write(
        &syntax,
        "apiVersion: appmesh.k8s.aws/v1beta2\nkind: Mesh\nmetadata: {name: demo}\nspec: {}\n---\n\
         kind: VirtualNode\nmetadata: {name: [web\n",
    )
    .expect("write manifest");
    for (path, expected) in [
        (
            &file,
            vec![
                "mesh.yaml: document 2 (VirtualNode web_prod)",
                "spec.listeners[0].portMapping.port",
            ],
        ),
        (&syntax, vec!["broken.yaml: document 2", "not valid YAML"]),
    ] {
        let api = support::free_addr();
        let out = Command::new(BIN)
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--api-addr", &api.to_string()])
            .args(["--xds-addr", &support::free_addr().to_string()])
            .arg("--load")
            .arg(path)
            .output()
            .expect("run serve");
        assert_eq!(out.status.code(), Some(2), "{}", path.display());
        let stderr = String::from_utf8_lossy(&out.stderr);
        for needle in expected {
            assert!(stderr.contains(needle), "missing {needle:?} in {stderr}");
        }
        assert!(
            std::net::TcpStream::connect(api).is_err(),
            "the API must not have been served"
        );
    }
}

/// `apply` applies documents one by one, as App Mesh and `kubectl apply`
/// do: when one fails, those before it stay applied, and the output says
/// which were applied and kept, which failed and which were never tried.
#[tokio::test(flavor = "multi_thread")]
async fn apply_says_which_documents_were_kept_when_a_later_one_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"), &[]);
    let file = dir.path().join("partial.yaml");
    let doc = |kind: &str, name: &str, spec: &str| {
        format!(
            "apiVersion: appmesh.k8s.aws/v1beta2\nkind: {kind}\nmetadata: {{name: {name}, namespace: prod}}\nspec: {spec}\n"
        )
    };
    let docs = [
        "apiVersion: appmesh.k8s.aws/v1beta2\nkind: Mesh\nmetadata: {name: partial}\nspec: {}\n"
            .to_string(),
        doc(
            "VirtualNode",
            "web",
            "{listeners: [{portMapping: {port: 8080, protocol: http}}], serviceDiscovery: {dns: {hostname: web.prod}}}",
        ),
        doc(
            "VirtualService",
            "ghost",
            "{provider: {virtualNode: {virtualNodeRef: {name: ghost}}}}",
        ),
        doc(
            "VirtualService",
            "web",
            "{provider: {virtualNode: {virtualNodeRef: {name: web}}}}",
        ),
    ];
    std::fs::write(&file, docs.join("---\n")).expect("write manifest");
    let out = Command::new(BIN)
        .args(["apply", "-f"])
        .arg(&file)
        .args(["--api-addr", &server.addr.to_string()])
        .arg("--data-dir")
        .arg(&server.data_dir)
        .output()
        .expect("run apply");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Mesh partial created\nVirtualNode web_prod created\n"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let path = file.display();
    for line in [
        format!("{path}: document 3 (VirtualService ghost.prod): "),
        "applied before the failure, and kept: Mesh partial (created), VirtualNode web_prod (created)\n".to_string(),
        format!(
            "not applied: {path}: document 3 (VirtualService ghost.prod), {path}: document 4 (VirtualService web.prod)\n"
        ),
    ] {
        assert!(stderr.contains(&line), "missing {line:?} in {stderr}");
    }
    let c = server.client();
    c.call(
        "DescribeVirtualNode",
        &json!({"meshName": "partial", "virtualNodeName": "web_prod"}),
    )
    .await
    .expect("kept");
    let never = c
        .call(
            "DescribeVirtualService",
            &json!({"meshName": "partial", "virtualServiceName": "web.prod"}),
        )
        .await
        .expect_err("never tried");
    assert_eq!(never.kind, ErrorKind::NotFound);
}

/// `--region` and `--account-id` go into every ARN and owner; `resourceArn`
/// and `meshOwner` are accepted for that region and account only.
#[tokio::test(flavor = "multi_thread")]
async fn region_and_account_id_shape_arns_and_owners() {
    use trellis_control::api::client::Client;
    const REGION: &str = "eu-central-1";
    const ACCOUNT: &str = "123456789012";
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        &dir.path().join("data"),
        &["--region", REGION, "--account-id", ACCOUNT],
    );
    let creds = Credentials::load(&server.data_dir.join("credentials")).expect("credentials");
    let c = Client::new(
        server.addr.to_string(),
        creds.preferred().clone(),
        REGION.into(),
    );
    let mesh = c
        .call("CreateMesh", &json!({"meshName": "eu"}))
        .await
        .expect("mesh");
    let prefix = format!("arn:aws:appmesh:{REGION}:{ACCOUNT}:mesh/eu");
    assert_eq!(mesh["mesh"]["metadata"]["arn"], prefix.as_str());
    assert_eq!(mesh["mesh"]["metadata"]["meshOwner"], ACCOUNT);
    assert_eq!(mesh["mesh"]["metadata"]["resourceOwner"], ACCOUNT);
    let node = c
        .call(
            "CreateVirtualNode",
            &json!({"meshName": "eu", "virtualNodeName": "web", "spec": vn_spec(80)}),
        )
        .await
        .expect("node");
    let node_arn = format!("{prefix}/virtualNode/web");
    assert_eq!(node["virtualNode"]["metadata"]["arn"], node_arn.as_str());
    assert_eq!(node["virtualNode"]["metadata"]["meshOwner"], ACCOUNT);
    let listed = c
        .call("ListVirtualNodes", &json!({"meshName": "eu"}))
        .await
        .expect("list");
    assert_eq!(listed["virtualNodes"][0]["arn"], node_arn.as_str());
    assert_eq!(listed["virtualNodes"][0]["meshOwner"], ACCOUNT);

    c.call(
        "TagResource",
        &json!({"resourceArn": node_arn, "tags": [{"key": "team", "value": "eu"}]}),
    )
    .await
    .expect("tag by this region's ARN");
    let tags = c
        .call("ListTagsForResource", &json!({"resourceArn": node_arn}))
        .await
        .expect("tags");
    assert_eq!(tags["tags"], json!([{"key": "team", "value": "eu"}]));
    for other in [
        "arn:aws:appmesh:us-west-2:123456789012:mesh/eu/virtualNode/web",
        "arn:aws:appmesh:eu-central-1:000000000000:mesh/eu/virtualNode/web",
    ] {
        let e = c
            .call("ListTagsForResource", &json!({"resourceArn": other}))
            .await
            .expect_err("another region's or account's ARN");
        assert_eq!(e.kind, ErrorKind::NotFound, "{other}: {e}");
    }

    c.call(
        "DescribeVirtualNode",
        &json!({"meshName": "eu", "virtualNodeName": "web", "meshOwner": ACCOUNT}),
    )
    .await
    .expect("meshOwner of this account");
    let e = c
        .call(
            "DescribeVirtualNode",
            &json!({"meshName": "eu", "virtualNodeName": "web", "meshOwner": "000000000000"}),
        )
        .await
        .expect_err("meshOwner of another account");
    assert_eq!(e.kind, ErrorKind::NotFound);
}

/// An access log format with an operator the proxies do not know would be
/// NACKed by every proxy: the API refuses it with a 400 naming the field
/// and the operator, and keeps nothing of it.
#[tokio::test(flavor = "multi_thread")]
async fn access_log_formats_are_checked_by_the_api() {
    use trellis_control::error::ErrorKind;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"), &[]);
    let c = server.client();
    c.call("CreateMesh", &json!({"meshName": "m"}))
        .await
        .expect("mesh");
    let node = |format: Value| {
        json!({"meshName": "m", "virtualNodeName": "n", "spec": {"logging": {"accessLog":
            {"file": {"path": "/dev/stdout", "format": format}}}}})
    };
    let e = c
        .call(
            "CreateVirtualNode",
            &node(json!({"text": "%START_TIME% %NO_SUCH_OPERATOR%"})),
        )
        .await
        .expect_err("unknown operator");
    assert_eq!(e.kind, ErrorKind::BadRequest, "{e:?}");
    for named in ["logging.accessLog.file.format.text", "NO_SUCH_OPERATOR"] {
        assert!(e.message.contains(named), "{}", e.message);
    }
    let e = c
        .call(
            "CreateVirtualNode",
            &node(json!({"json": [{"key": "path", "value": "%REQ(:PATH"}]})),
        )
        .await
        .expect_err("unclosed operator");
    assert_eq!(e.kind, ErrorKind::BadRequest, "{e:?}");
    assert!(e.message.contains("format.json[0].value"), "{}", e.message);
    c.call(
        "DescribeVirtualNode",
        &json!({"meshName": "m", "virtualNodeName": "n"}),
    )
    .await
    .expect_err("nothing was created");
    c.call(
        "CreateVirtualNode",
        &node(json!({"json": [{"key": "code", "value": "%RESPONSE_CODE%"}]})),
    )
    .await
    .expect("known operators");
}
