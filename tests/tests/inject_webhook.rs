//! The sidecar injector end to end: a running `trellis-control serve
//! --webhook-addr` answered over real HTTPS (rustls client, certificates
//! made here with rcgen, or issued by the mesh CA), AdmissionReview
//! documents from `control/tests/inject/`, each returned patch applied to
//! the pod with the json-patch crate. Virtual nodes come from `--load` and
//! from `trellis-control apply`, which sends their pod selectors over the
//! signed API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use trellis_tests::control::Control;
use trellis_tests::process::workspace_bin;
use trellis_tests::tls::{client_config, https_get, https_post, Ca, Leaf};
use trellis_tests::{eventually, free_port, loopback, within};

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../control/tests/inject")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("fixture");
    serde_json::from_str(&text).expect("fixture JSON")
}

fn mesh_yaml() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../control/tests/inject/mesh.yaml")
        .to_string_lossy()
        .into_owned()
}

struct Webhook {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

impl Webhook {
    /// Waits for the handshake to succeed.
    async fn ready(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Webhook {
        let hook = Webhook { addr, tls };
        eventually(Duration::from_secs(20), "the webhook to answer", || async {
            https_get(hook.addr, "localhost", hook.tls.clone(), "/mutate-v1-pod")
                .await
                .ok()
        })
        .await;
        hook
    }

    /// POSTs `review` to `path`; the answer must be an allowed
    /// AdmissionReview for the same request. Returns it and the patched pod.
    async fn review(&self, path: &str, review: &Value) -> (Value, Option<Value>) {
        let reply = https_post(
            self.addr,
            "localhost",
            self.tls.clone(),
            path,
            serde_json::to_vec(review).unwrap(),
        )
        .await
        .expect("the webhook answers over HTTPS");
        assert_eq!(reply.status, 200, "{}", reply.body);
        let out: Value = serde_json::from_str(&reply.body).expect("a JSON AdmissionReview");
        let response = out["response"].clone();
        assert_eq!(out["apiVersion"], review["apiVersion"]);
        assert_eq!(response["uid"], review["request"]["uid"]);
        assert_eq!(response["allowed"], true);
        let pod = response["patch"].as_str().map(|b64| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("base64 patch");
            let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("RFC 6902 patch");
            let mut pod = review["request"]["object"].clone();
            json_patch::patch(&mut pod, &patch).expect("the patch applies");
            pod
        });
        (response, pod)
    }
}

fn sidecar(pod: &Value) -> &Value {
    pod["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "trellis-proxy"))
        .expect("the sidecar was added")
}

fn env_of<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

#[tokio::test]
async fn the_webhook_injects_over_https_with_the_operators_certificate() {
    within(Duration::from_secs(90), "webhook with files", async {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("webhook test CA");
        let leaf = ca.issue(&Leaf::new(&["localhost"], &[]));
        let (crt, key) = leaf.write(dir.path(), "webhook");
        let addr = loopback(free_port());
        let (addr_s, crt_s, key_s, mesh) = (
            addr.to_string(),
            crt.to_string_lossy().into_owned(),
            key.to_string_lossy().into_owned(),
            mesh_yaml(),
        );
        let control = Control::start_with(
            dir,
            &[
                "--webhook-addr",
                &addr_s,
                "--webhook-cert",
                &crt_s,
                "--webhook-key",
                &key_s,
                "--load",
                &mesh,
                "--sidecar-xds-addr",
                "10.0.0.5:18000",
                "--sidecar-image-repository",
                "registry.example.com/trellis-proxy",
                "--sidecar-image-tag",
                "e2e",
                "--sidecar-memory-limits",
                "128Mi",
                "--prestop-hook",
                "exec",
            ],
        )
        .await;
        let hook = Webhook::ready(addr, client_config(&ca.pem, None, &[])).await;

        // The server presents the operator's certificate.
        let probe = https_get(addr, "localhost", hook.tls.clone(), "/mutate-v1-pod")
            .await
            .unwrap();
        assert_eq!(probe.server_cert, leaf.der);
        assert_eq!(probe.status, 405);

        let (response, pod) = hook
            .review("/mutate-v1-pod", &fixture("cart-pod.json"))
            .await;
        assert!(response.get("warnings").is_none(), "{response}");
        let pod = pod.expect("the cart pod is injected");
        let proxy = sidecar(&pod);
        assert_eq!(proxy["image"], "registry.example.com/trellis-proxy:e2e");
        assert_eq!(
            env_of(proxy, "APPMESH_RESOURCE_ARN"),
            Some("mesh/shop-mesh/virtualNode/cart_shop")
        );
        assert_eq!(env_of(proxy, "TRELLIS_XDS_ADDR"), Some("10.0.0.5:18000"));
        // The sidecar reaches xDS over TLS, trusting the mesh CA.
        let bundle = std::fs::read_to_string(control.ca_path()).expect("the mesh CA");
        assert_eq!(env_of(proxy, "TRELLIS_XDS_CA"), Some(bundle.as_str()));
        // ... and the xDS certificate names the address sidecars dial.
        let out = tokio::process::Command::new("openssl")
            .args(["s_client", "-connect", &control.xds, "-CAfile"])
            .arg(control.ca_path())
            .args(["-verify_return_error", "-verify_ip", "10.0.0.5"])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("openssl s_client runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(
            proxy["resources"],
            json!({"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}})
        );
        // Kubernetes before 1.30: the preStop hook execs `sleep`.
        assert_eq!(
            proxy["lifecycle"]["preStop"],
            json!({"exec": {"command": ["sleep", "20"]}})
        );
        let inits = pod["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(inits.last().unwrap()["name"], "trellis-init");

        // Opt-in namespaces inject annotated pods only.
        let (_, untouched) = hook
            .review("/mutate-v1-pod/opt-in", &fixture("cart-pod.json"))
            .await;
        assert!(untouched.is_none());

        // A virtual node applied while the server runs: its podSelector
        // travels over the signed API and picks the next pod.
        let vn = control.dir.path().join("basket.yaml");
        std::fs::write(
            &vn,
            "apiVersion: appmesh.k8s.aws/v1beta2\nkind: VirtualNode\n\
             metadata: {name: basket, namespace: shop}\n\
             spec:\n  meshRef: {name: shop-mesh}\n  podSelector: {matchLabels: {app: basket}}\n\
             \x20 listeners: [{portMapping: {port: 8088, protocol: http}}]\n\
             \x20 serviceDiscovery: {dns: {hostname: basket.shop.svc.cluster.local}}\n",
        )
        .unwrap();
        let out = control.cli(&["apply", "-f", &vn.to_string_lossy()]).await;
        assert_eq!(out.trim(), "VirtualNode basket_shop created");
        let mut basket = fixture("cart-pod.json");
        basket["request"]["object"]["metadata"]["labels"] = json!({"app": "basket"});
        let (_, pod) = hook.review("/mutate-v1-pod", &basket).await;
        let pod = pod.expect("the basket pod is injected");
        assert_eq!(
            env_of(sidecar(&pod), "APPMESH_RESOURCE_ARN"),
            Some("mesh/shop-mesh/virtualNode/basket_shop")
        );
        let init = &pod["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(env_of(init, "APPMESH_APP_PORTS"), Some("8088"));

        // A malformed review is still a clear, allowed answer.
        let reply = https_post(
            addr,
            "localhost",
            hook.tls.clone(),
            "/mutate-v1-pod",
            b"{oops".to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 200);
        let out: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(out["response"]["allowed"], true);
        let warning = out["response"]["warnings"][0].as_str().unwrap();
        assert!(
            warning.starts_with(
                "trellis sidecar injector: malformed admission review: the body is not JSON"
            ),
            "{warning}"
        );
        let lost = https_post(
            addr,
            "localhost",
            hook.tls.clone(),
            "/mutate",
            b"{}".to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(lost.status, 404);

        // A rotated pair (cert-manager renewing the Secret) is served from
        // the next handshake on, without a restart.
        let renewed = ca.issue(&Leaf::new(&["localhost"], &[]));
        renewed.write(control.dir.path(), "webhook");
        eventually(
            Duration::from_secs(20),
            "the renewed certificate",
            || async {
                let r = https_get(addr, "localhost", hook.tls.clone(), "/")
                    .await
                    .ok()?;
                (r.server_cert == renewed.der).then_some(())
            },
        )
        .await;
        let (_, pod) = hook
            .review("/mutate-v1-pod", &fixture("cart-pod.json"))
            .await;
        assert!(pod.is_some());
    })
    .await;
}

#[tokio::test]
async fn a_certificate_and_key_that_do_not_match_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("webhook test CA");
    let (crt, _) = ca
        .issue(&Leaf::new(&["localhost"], &[]))
        .write(dir.path(), "a");
    let (_, key) = ca
        .issue(&Leaf::new(&["localhost"], &[]))
        .write(dir.path(), "b");
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(workspace_bin("trellis-control"))
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--no-auth",
                "--api-addr",
                &loopback(free_port()).to_string(),
            ])
            .args(["--xds-addr", &loopback(free_port()).to_string()])
            .args(["--webhook-addr", &loopback(free_port()).to_string()])
            .arg("--webhook-cert")
            .arg(&crt)
            .arg("--webhook-key")
            .arg(&key)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("trellis-control exits")
    .expect("trellis-control runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().last().unwrap_or_default();
    let want = format!(
        "trellis-control: {} and {}: the certificate and the key do not belong together",
        crt.display(),
        key.display()
    );
    assert!(line.starts_with(&want), "{stderr}");
}

#[tokio::test]
async fn without_a_certificate_the_webhook_serves_one_from_the_mesh_ca() {
    within(Duration::from_secs(60), "webhook with the mesh CA", async {
        let addr = loopback(free_port());
        let (addr_s, mesh) = (addr.to_string(), mesh_yaml());
        let control = Control::start_with(
            tempfile::tempdir().unwrap(),
            &["--webhook-addr", &addr_s, "--load", &mesh],
        )
        .await;
        let ca_pem = std::fs::read_to_string(control.dir.path().join("data/ca/ca.pem"))
            .expect("the mesh CA certificate");
        let hook = Webhook::ready(addr, client_config(&ca_pem, None, &[])).await;
        let (_, pod) = hook
            .review("/mutate-v1-pod", &fixture("payments-annotated.json"))
            .await;
        let pod = pod.expect("the payments pod is injected");
        assert_eq!(
            env_of(sidecar(&pod), "APPMESH_RESOURCE_ARN"),
            Some("mesh/shop-mesh/virtualNode/payments_shop")
        );

        // A client that trusts another CA refuses the certificate.
        let stranger = Ca::new("someone else");
        let refused = https_get(
            addr,
            "localhost",
            client_config(&stranger.pem, None, &[]),
            "/",
        )
        .await;
        assert!(refused.is_err());
    })
    .await;
}
