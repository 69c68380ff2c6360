//! The sidecar injector on real AdmissionReview documents
//! (`tests/inject/*.json`) against the mesh of `tests/inject/mesh.yaml`,
//! loaded into a real store: each returned patch is applied to the pod with
//! a JSON Patch library (RFC 6902) and the resulting pod checked field by
//! field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use serde_json::{json, Value};
use trellis_control::inject::{admit, MeshView, NamespaceDefault, PreStopHook, Settings, XdsTrust};
use trellis_control::manifest::{self, Outcome};
use trellis_control::ops::{AppMesh, Identity};
use trellis_control::store::Store;
use trellis_control::xds::translate::NodeId;

const IMAGE: &str = "registry.example.com/trellis/trellis-proxy:0.1.0";
const XDS: &str = "trellis-control.trellis-system.svc:18000";
/// Stands for the mesh CA bundle injected sidecars trust for xDS.
const XDS_CA: &str = "-----BEGIN CERTIFICATE-----\nbundle\n-----END CERTIFICATE-----\n";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inject")
}

fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(dir().join(name)).expect("fixture");
    serde_json::from_str(&text).expect("fixture JSON")
}

struct Mesh {
    store: Arc<Store>,
    appmesh: AppMesh,
}

impl Mesh {
    fn load() -> Mesh {
        let store = Arc::new(Store::open_in_memory().expect("store"));
        let appmesh = AppMesh::new(
            store.clone(),
            Identity {
                region: "us-west-2".into(),
                account: "000000000000".into(),
            },
        );
        let mesh = Mesh { store, appmesh };
        mesh.apply(&dir().join("mesh.yaml"));
        mesh
    }

    fn apply(&self, path: &Path) -> Vec<(Outcome, String)> {
        let docs = manifest::load(&[path.to_path_buf()], None).expect("manifests load");
        manifest::apply(&docs, &mut &self.appmesh).expect("manifests apply")
    }

    fn view(&self) -> MeshView {
        self.store.read(|tx| MeshView::read(tx)).expect("mesh view")
    }
}

fn settings() -> Settings {
    Settings::new(IMAGE.into(), XDS.into(), XdsTrust::Bundle(XDS_CA.into()))
}

/// The answer to `review`, checked for what every answer must be: the
/// request's apiVersion and uid, allowed. With a patch, also the pod it
/// makes (applied with the json-patch crate).
struct Answer {
    response: Value,
    pod: Option<Value>,
}

impl Answer {
    fn warnings(&self) -> Vec<String> {
        self.response["warnings"]
            .as_array()
            .map(|w| {
                w.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn pod(&self) -> &Value {
        self.pod.as_ref().expect("the pod was patched")
    }
}

fn run_with(
    review: &Value,
    mesh: &MeshView,
    settings: &Settings,
    default: NamespaceDefault,
) -> Answer {
    let body = serde_json::to_vec(review).unwrap();
    let out = admit(&body, Ok(mesh), settings, default).review;
    assert_eq!(out["kind"], "AdmissionReview");
    assert_eq!(out["apiVersion"], review["apiVersion"]);
    let response = out["response"].clone();
    assert_eq!(response["uid"], review["request"]["uid"]);
    assert_eq!(response["allowed"], true);
    let pod = response["patch"].as_str().map(|b64| {
        assert_eq!(response["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("the patch is base64");
        let patch: json_patch::Patch =
            serde_json::from_slice(&bytes).expect("the patch is an RFC 6902 document");
        let mut pod = review["request"]["object"].clone();
        json_patch::patch(&mut pod, &patch).expect("the patch applies to the pod");
        pod
    });
    if pod.is_none() {
        assert!(response.get("patchType").is_none(), "{response}");
    }
    Answer { response, pod }
}

fn run(review: &Value, mesh: &MeshView) -> Answer {
    run_with(review, mesh, &settings(), NamespaceDefault::Enabled)
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|c| c["name"].as_str().expect("a name"))
        .collect()
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {list} entry {name} in {pod}"))
}

fn env(c: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in c["env"].as_array().expect("env") {
        let name = e["name"].as_str().expect("env name").to_string();
        // A Secret's key reads `secret:NAME/KEY`.
        let secret = &e["valueFrom"]["secretKeyRef"];
        let value = match e["value"].as_str() {
            Some(v) => v.to_string(),
            None => format!(
                "secret:{}/{}",
                secret["name"].as_str().expect("secret name"),
                secret["key"].as_str().expect("secret key")
            ),
        };
        assert!(
            out.insert(name.clone(), value).is_none(),
            "{name} is set twice"
        );
    }
    out
}

fn expect_env(c: &Value, want: &[(&str, &str)]) {
    let got = env(c);
    for (k, v) in want {
        assert_eq!(got.get(*k).map(String::as_str), Some(*v), "{k} in {got:?}");
    }
}

#[test]
fn a_selected_pod_gets_the_sidecar_and_the_init_container() {
    let mesh = Mesh::load();
    let review = fixture("cart-pod.json");
    let answer = run(&review, &mesh.view());
    assert!(answer.warnings().is_empty(), "{:?}", answer.warnings());
    let pod = answer.pod();

    // Appended: the app's own init container runs before interception.
    assert_eq!(
        names(&pod["spec"]["initContainers"]),
        ["migrate", "trellis-init"]
    );
    assert_eq!(names(&pod["spec"]["containers"]), ["cart", "trellis-proxy"]);

    let init = container(pod, "initContainers", "trellis-init");
    assert_eq!(init["image"], IMAGE);
    assert_eq!(init["command"], json!(["trellis-proxy", "init"]));
    expect_env(
        init,
        &[
            ("APPMESH_APP_PORTS", "8080"),
            ("APPMESH_ENVOY_INGRESS_PORT", "15000"),
            ("APPMESH_ENVOY_EGRESS_PORT", "15001"),
            ("APPMESH_IGNORE_UID", "1337"),
            ("APPMESH_EGRESS_IGNORED_IP", "169.254.169.254"),
            ("APPMESH_EGRESS_IGNORED_PORTS", "22"),
        ],
    );
    assert_eq!(
        init["securityContext"],
        json!({"runAsUser": 0, "runAsNonRoot": false, "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}})
    );
    assert_eq!(
        init["resources"],
        json!({"requests": {"cpu": "10m", "memory": "32Mi"}})
    );

    let proxy = container(pod, "containers", "trellis-proxy");
    assert_eq!(proxy["image"], IMAGE);
    assert_eq!(proxy["command"], json!(["trellis-proxy"]));
    expect_env(
        proxy,
        &[
            (
                "APPMESH_RESOURCE_ARN",
                "mesh/shop-mesh/virtualNode/cart_shop",
            ),
            ("TRELLIS_XDS_ADDR", XDS),
            ("TRELLIS_XDS_CA", XDS_CA),
            ("ENVOY_ADMIN_ACCESS_PORT", "9901"),
            ("ENVOY_LOG_LEVEL", "info"),
            ("APPMESH_ENVOY_INGRESS_PORT", "15000"),
            ("APPMESH_ENVOY_EGRESS_PORT", "15001"),
        ],
    );
    // The node's token comes from its Secret (`token issue --output
    // k8s-secret` prints it); the name is DNS-1123 and unique to the node.
    let secret = trellis_control::tokens::k8s_secret_name(&NodeId {
        mesh: "shop-mesh".into(),
        gateway: false,
        name: "cart_shop".into(),
    });
    assert!(
        secret.starts_with("trellis-token-shop-mesh-cart-shop-"),
        "{secret}"
    );
    expect_env(
        proxy,
        &[("TRELLIS_XDS_TOKEN", &format!("secret:{secret}/token"))],
    );
    assert_eq!(proxy["securityContext"], json!({"runAsUser": 1337}));
    assert_eq!(
        proxy["resources"],
        json!({"requests": {"cpu": "10m", "memory": "32Mi"}})
    );
    // The admin API stays on 127.0.0.1: no port is declared for it.
    assert!(proxy.get("ports").is_none());
    let ready_check = json!([
        "trellis-proxy",
        "wait-ready",
        "--admin",
        "127.0.0.1:9901",
        "--timeout",
        "1"
    ]);
    let readiness = &proxy["readinessProbe"];
    assert_eq!(readiness["exec"]["command"], ready_check);
    assert_eq!(
        (
            &readiness["initialDelaySeconds"],
            &readiness["periodSeconds"],
            &readiness["failureThreshold"]
        ),
        (&json!(1), &json!(10), &json!(3))
    );
    assert_eq!(proxy["livenessProbe"]["exec"]["command"], ready_check);
    assert_eq!(
        proxy["lifecycle"],
        json!({"preStop": {"sleep": {"seconds": 20}}})
    );
    assert!(proxy.get("volumeMounts").is_none());

    // Nothing else of the pod changed.
    let mut rest = pod.clone();
    rest["spec"]["containers"].as_array_mut().unwrap().pop();
    rest["spec"]["initContainers"].as_array_mut().unwrap().pop();
    assert_eq!(rest, review["request"]["object"]);
}

#[test]
fn annotations_override_what_app_mesh_let_pods_override() {
    let mesh = Mesh::load();
    let review = fixture("payments-annotated.json");
    let answer = run(&review, &mesh.view());
    assert!(answer.warnings().is_empty(), "{:?}", answer.warnings());
    let pod = answer.pod();
    // No initContainers list before: the patch created it.
    assert_eq!(names(&pod["spec"]["initContainers"]), ["trellis-init"]);
    let init = container(pod, "initContainers", "trellis-init");
    expect_env(
        init,
        &[
            ("APPMESH_APP_PORTS", "8443,9090"),
            ("APPMESH_EGRESS_IGNORED_PORTS", "22,5432"),
            ("APPMESH_EGRESS_IGNORED_IP", "169.254.169.254,10.20.0.0/16"),
        ],
    );
    let resources = json!({
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"memory": "256Mi"}
    });
    assert_eq!(init["resources"], resources);
    let proxy = container(pod, "containers", "trellis-proxy");
    assert_eq!(proxy["resources"], resources);
    // The annotation named the VirtualNode by its Kubernetes name.
    expect_env(
        proxy,
        &[
            (
                "APPMESH_RESOURCE_ARN",
                "mesh/shop-mesh/virtualNode/payments_shop",
            ),
            ("DD_ENV", "prod"),
            // sidecarEnv cannot override what the injector sets.
            ("TRELLIS_XDS_ADDR", XDS),
        ],
    );
    assert_eq!(
        proxy["volumeMounts"],
        json!([
            {"name": "payments-tls", "mountPath": "/certs", "readOnly": true},
            {"name": "shared-config", "mountPath": "/etc/shared", "readOnly": true}
        ])
    );
    assert_eq!(
        names(&pod["spec"]["volumes"]),
        ["kube-api-access-q9m4d", "shared-config", "payments-tls"]
    );
    assert_eq!(
        pod["spec"]["volumes"][2]["secret"],
        json!({"secretName": "payments-tls"})
    );
}

#[test]
fn the_ignored_uid_annotation_moves_the_proxy_and_its_exemption_together() {
    let mesh = Mesh::load();
    let mut review = fixture("cart-pod.json");
    review["request"]["object"]["metadata"]["annotations"] =
        json!({"appmesh.k8s.aws/ignoredUID": "2000"});
    let answer = run(&review, &mesh.view());
    let pod = answer.pod();
    expect_env(
        container(pod, "initContainers", "trellis-init"),
        &[("APPMESH_IGNORE_UID", "2000")],
    );
    assert_eq!(
        container(pod, "containers", "trellis-proxy")["securityContext"],
        json!({"runAsUser": 2000})
    );
}

#[test]
fn opted_out_and_unselected_pods_are_untouched() {
    let mesh = Mesh::load();
    let view = mesh.view();
    let out = run(&fixture("cart-opted-out.json"), &view);
    assert!(out.pod.is_none());
    assert!(out.warnings().is_empty(), "{:?}", out.warnings());

    let job = run(&fixture("job-unselected.json"), &view);
    assert!(job.pod.is_none());
    assert_eq!(
        job.warnings(),
        [
            "trellis sidecar injector: not injected: no VirtualNode in namespace shop has a \
          podSelector matching this pod's labels (or name one with appmesh.k8s.aws/virtualNode)"
        ]
    );
}

#[test]
fn an_opt_in_namespace_injects_only_annotated_pods() {
    let mesh = Mesh::load();
    let view = mesh.view();
    let mut review = fixture("cart-pod.json");
    let quiet = run_with(&review, &view, &settings(), NamespaceDefault::Disabled);
    assert!(quiet.pod.is_none());
    assert!(quiet.warnings().is_empty());

    review["request"]["object"]["metadata"]["annotations"] =
        json!({"appmesh.k8s.aws/sidecarInjectorWebhook": "Enabled"});
    let injected = run_with(&review, &view, &settings(), NamespaceDefault::Disabled);
    expect_env(
        container(injected.pod(), "containers", "trellis-proxy"),
        &[(
            "APPMESH_RESOURCE_ARN",
            "mesh/shop-mesh/virtualNode/cart_shop",
        )],
    );

    review["request"]["object"]["metadata"]["annotations"] =
        json!({"appmesh.k8s.aws/sidecarInjectorWebhook": "yes"});
    let unclear = run(&review, &view);
    assert!(unclear.pod.is_none());
    assert_eq!(
        unclear.warnings(),
        [
            "trellis sidecar injector: not injected: appmesh.k8s.aws/sidecarInjectorWebhook: \
          'yes' is neither enabled nor disabled"
        ]
    );
}

#[test]
fn ambiguous_and_unknown_nodes_are_warnings_not_refusals() {
    let mesh = Mesh::load();
    let view = mesh.view();
    let two = run(&fixture("cart-two-nodes.json"), &view);
    assert!(two.pod.is_none());
    assert_eq!(
        two.warnings(),
        [
            "trellis sidecar injector: not injected: the podSelectors of several virtual nodes \
          match this pod (mesh/shop-mesh/virtualNode/cart_shop, \
          mesh/shop-mesh/virtualNode/legacy_shop); narrow them or name one with \
          appmesh.k8s.aws/virtualNode"
        ]
    );

    let mut review = fixture("reporter-ambiguous.json");
    let amb = run(&review, &view);
    assert!(amb.pod.is_none());
    assert_eq!(
        amb.warnings(),
        ["trellis sidecar injector: not injected: appmesh.k8s.aws/virtualNode: 'reporter' \
          names a virtual node in several meshes (audit-mesh, shop-mesh); write mesh/M/virtualNode/N"]
    );

    let annotations = &mut review["request"]["object"]["metadata"]["annotations"];
    annotations["appmesh.k8s.aws/virtualNode"] = json!("mesh/audit-mesh/virtualNode/reporter");
    let by_path = run(&review, &view);
    let proxy = container(by_path.pod(), "containers", "trellis-proxy");
    expect_env(
        proxy,
        &[(
            "APPMESH_RESOURCE_ARN",
            "mesh/audit-mesh/virtualNode/reporter",
        )],
    );
    expect_env(
        container(by_path.pod(), "initContainers", "trellis-init"),
        &[("APPMESH_APP_PORTS", "7000")],
    );

    let arn = "arn:aws:appmesh:us-west-2:000000000000:mesh/shop-mesh/virtualNode/reporter";
    review["request"]["object"]["metadata"]["annotations"]["appmesh.k8s.aws/virtualNode"] =
        json!(arn);
    let by_arn = run(&review, &view);
    expect_env(
        container(by_arn.pod(), "containers", "trellis-proxy"),
        &[(
            "APPMESH_RESOURCE_ARN",
            "mesh/shop-mesh/virtualNode/reporter",
        )],
    );

    review["request"]["object"]["metadata"]["annotations"]["appmesh.k8s.aws/virtualNode"] =
        json!("nope");
    let unknown = run(&review, &view);
    assert!(unknown.pod.is_none());
    assert_eq!(
        unknown.warnings(),
        ["trellis sidecar injector: not injected: appmesh.k8s.aws/virtualNode: no virtual node 'nope'"]
    );
}

#[test]
fn bad_annotations_name_themselves() {
    let mesh = Mesh::load();
    let view = mesh.view();
    let bad = run(&fixture("cart-bad-cpu.json"), &view);
    assert!(bad.pod.is_none());
    assert_eq!(
        bad.warnings(),
        [
            "trellis sidecar injector: not injected: appmesh.k8s.aws/cpuRequest: 'lots' is not a \
          Kubernetes quantity (such as 100m, 0.5, 64Mi)"
        ]
    );
    let cases = [
        (
            "appmesh.k8s.aws/ports",
            "80,http",
            "'http' is not a port (1-65535)",
        ),
        (
            "appmesh.k8s.aws/egressIgnoredIPs",
            "10.0.0.0/40",
            "'10.0.0.0/40' is not an IP address or CIDR",
        ),
        (
            "appmesh.k8s.aws/volumeMounts",
            "config:/etc/x",
            "the pod has no volume 'config'",
        ),
        (
            "appmesh.k8s.aws/secretMounts",
            "tls-certs",
            "'tls-certs' is not name:mountPath",
        ),
        (
            "appmesh.k8s.aws/sidecarEnv",
            "DD_ENV",
            "'DD_ENV' is not NAME=value",
        ),
    ];
    for (key, value, why) in cases {
        let mut review = fixture("cart-pod.json");
        review["request"]["object"]["metadata"]["annotations"] = json!({ key: value });
        let out = run(&review, &view);
        assert!(out.pod.is_none(), "{key}");
        assert_eq!(
            out.warnings(),
            [format!(
                "trellis sidecar injector: not injected: {key}: {why}"
            )]
        );
    }
}

/// The answer to a body that is not a good review: allowed, unpatched,
/// with one warning.
fn malformed(body: &[u8], view: &MeshView) -> Value {
    let out = admit(body, Ok(view), &settings(), NamespaceDefault::Enabled).review;
    let r = &out["response"];
    assert_eq!(r["allowed"], true, "{out}");
    assert!(r.get("patch").is_none(), "{out}");
    assert_eq!(r["warnings"].as_array().map(Vec::len), Some(1), "{out}");
    out
}

#[test]
fn malformed_reviews_get_a_clear_allowed_answer() {
    let mesh = Mesh::load();
    let view = mesh.view();

    let out = malformed(b"{\"apiVersion\": ", &view);
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["response"]["uid"], "");
    let w = out["response"]["warnings"][0].as_str().unwrap();
    assert!(
        w.starts_with("trellis sidecar injector: malformed admission review: the body is not JSON"),
        "{w}"
    );

    let warning = |out: &Value| out["response"]["warnings"][0].as_str().unwrap().to_string();
    let prefix = "trellis sidecar injector: malformed admission review: ";

    let mut no_uid = fixture("cart-pod.json");
    no_uid["request"].as_object_mut().unwrap().remove("uid");
    let out = malformed(no_uid.to_string().as_bytes(), &view);
    assert_eq!(warning(&out), format!("{prefix}request.uid is missing"));

    let deployment = fixture("deployment-not-a-pod.json");
    let out = malformed(deployment.to_string().as_bytes(), &view);
    assert_eq!(out["response"]["uid"], deployment["request"]["uid"]);
    assert_eq!(
        warning(&out),
        format!(
            "{prefix}request.kind is {{\"group\":\"apps\",\"kind\":\"Deployment\",\"version\":\"v1\"}}, \
             not a v1 Pod; the webhook should only get pods"
        )
    );

    let mut update = fixture("cart-pod.json");
    update["request"]["operation"] = json!("UPDATE");
    let out = malformed(update.to_string().as_bytes(), &view);
    assert_eq!(
        warning(&out),
        format!("{prefix}request.operation is \"UPDATE\"; sidecars are injected on CREATE only")
    );

    let mut version = fixture("cart-pod.json");
    version["apiVersion"] = json!("admission.k8s.io/v2");
    let out = malformed(version.to_string().as_bytes(), &view);
    assert_eq!(
        warning(&out),
        format!("{prefix}apiVersion 'admission.k8s.io/v2' is not admission.k8s.io/v1")
    );

    let mut no_containers = fixture("cart-pod.json");
    no_containers["request"]["object"]["spec"]
        .as_object_mut()
        .unwrap()
        .remove("containers");
    let out = malformed(no_containers.to_string().as_bytes(), &view);
    assert_eq!(
        warning(&out),
        "trellis sidecar injector: not injected: spec.containers: required list is missing"
    );
    assert_eq!(out["response"]["uid"], no_containers["request"]["uid"]);
}

#[test]
fn a_mesh_that_cannot_be_read_lets_pods_through_with_a_warning() {
    let body = fixture("cart-pod.json").to_string();
    let out = admit(
        body.as_bytes(),
        Err("database is locked"),
        &settings(),
        NamespaceDefault::Enabled,
    );
    assert!(out.injected.is_none());
    assert_eq!(
        out.review["response"]["warnings"],
        json!(["trellis sidecar injector: not injected: the mesh could not be read: database is locked"])
    );
}

#[test]
fn v1beta1_reviews_are_answered_in_kind() {
    let mesh = Mesh::load();
    let review = fixture("v1beta1-kubectl-run.json");
    let answer = run(&review, &mesh.view());
    assert_eq!(
        names(&answer.pod()["spec"]["containers"]),
        ["cart-debug", "trellis-proxy"]
    );
}

#[test]
fn an_injected_pod_is_not_injected_twice() {
    let mesh = Mesh::load();
    let view = mesh.view();
    let mut review = fixture("cart-pod.json");
    let first = run(&review, &view);
    review["request"]["object"] = first.pod().clone();
    let again = run(&review, &view);
    assert!(again.pod.is_none());
    assert!(again.warnings().is_empty());
}

/// For a server started with `--require-node-tokens never` the sidecar
/// reads no Secret, which would otherwise have to exist for the pod to start.
#[test]
fn without_node_tokens_no_secret_is_referenced() {
    let mesh = Mesh::load();
    let mut s = settings();
    s.node_tokens = false;
    let answer = run_with(
        &fixture("cart-pod.json"),
        &mesh.view(),
        &s,
        NamespaceDefault::Enabled,
    );
    let proxy = container(answer.pod(), "containers", "trellis-proxy");
    assert!(!env(proxy).contains_key("TRELLIS_XDS_TOKEN"), "{proxy}");
}

#[test]
fn wait_until_proxy_ready_starts_the_sidecar_first() {
    let mesh = Mesh::load();
    let mut s = settings();
    s.wait_until_proxy_ready = true;
    s.prestop_delay_s = 0;
    s.admin_port = 9902;
    let answer = run_with(
        &fixture("cart-pod.json"),
        &mesh.view(),
        &s,
        NamespaceDefault::Enabled,
    );
    let pod = answer.pod();
    assert_eq!(names(&pod["spec"]["containers"]), ["trellis-proxy", "cart"]);
    let proxy = container(pod, "containers", "trellis-proxy");
    assert_eq!(
        proxy["lifecycle"],
        json!({"postStart": {"exec": {"command": [
            "trellis-proxy", "wait-ready", "--admin", "127.0.0.1:9902", "--timeout", "180"
        ]}}})
    );
    expect_env(proxy, &[("ENVOY_ADMIN_ACCESS_PORT", "9902")]);
}

/// Clusters older than Kubernetes 1.30 have no `sleep` action: the `exec`
/// hook runs the image's `sleep` instead.
#[test]
fn prestop_exec_hook_for_older_clusters() {
    let mesh = Mesh::load();
    let mut s = settings();
    s.prestop_hook = PreStopHook::Exec;
    s.prestop_delay_s = 7;
    let answer = run_with(
        &fixture("cart-pod.json"),
        &mesh.view(),
        &s,
        NamespaceDefault::Enabled,
    );
    let proxy = container(answer.pod(), "containers", "trellis-proxy");
    assert_eq!(
        proxy["lifecycle"],
        json!({"preStop": {"exec": {"command": ["sleep", "7"]}}})
    );
}

#[test]
fn selectors_follow_applies_and_deletes() {
    let mesh = Mesh::load();
    // The cart-and-legacy pod is claimed twice until legacy goes.
    assert!(run(&fixture("cart-two-nodes.json"), &mesh.view())
        .pod
        .is_none());
    mesh.appmesh
        .call(
            "DeleteVirtualNode",
            &json!({"meshName": "shop-mesh", "virtualNodeName": "legacy_shop"}),
        )
        .expect("delete legacy");
    let now = run(&fixture("cart-two-nodes.json"), &mesh.view());
    expect_env(
        container(now.pod(), "containers", "trellis-proxy"),
        &[(
            "APPMESH_RESOURCE_ARN",
            "mesh/shop-mesh/virtualNode/cart_shop",
        )],
    );

    // A new podSelector alone is an update, and the old labels stop matching.
    let text = std::fs::read_to_string(dir().join("mesh.yaml")).unwrap();
    let changed = text.replacen("      app: cart\n", "      app: basket\n", 1);
    assert_ne!(changed, text);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("mesh.yaml");
    std::fs::write(&path, changed).unwrap();
    let outcomes = mesh.apply(&path);
    assert!(
        outcomes.contains(&(Outcome::Updated, "VirtualNode cart_shop".to_string())),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&(Outcome::Unchanged, "VirtualNode payments_shop".to_string())),
        "{outcomes:?}"
    );
    assert!(run(&fixture("cart-pod.json"), &mesh.view()).pod.is_none());
}

#[test]
fn the_shipped_webhook_configuration_matches_the_server() {
    use trellis_control::inject::server::PATHS;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/injector.yaml");
    let text = std::fs::read_to_string(path).expect("deploy/injector.yaml");
    let config: Value = serde_yaml::from_str(&text).expect("YAML");
    assert_eq!(config["kind"], "MutatingWebhookConfiguration");
    let hooks = config["webhooks"].as_array().expect("webhooks");
    assert_eq!(hooks.len(), PATHS.len());
    for hook in hooks {
        let path = hook["clientConfig"]["service"]["path"]
            .as_str()
            .expect("path");
        let (_, default) = PATHS
            .iter()
            .find(|(p, _)| *p == path)
            .unwrap_or_else(|| panic!("the server does not serve {path}"));
        let label = match default {
            NamespaceDefault::Enabled => "enabled",
            NamespaceDefault::Disabled => "disabled",
        };
        assert_eq!(
            hook["namespaceSelector"],
            json!({"matchLabels": {"appmesh.k8s.aws/sidecarInjectorWebhook": label}}),
            "{path}"
        );
        assert_eq!(hook["failurePolicy"], "Ignore", "{path}");
        assert_eq!(hook["sideEffects"], "None", "{path}");
        assert_eq!(hook["admissionReviewVersions"], json!(["v1"]), "{path}");
        assert_eq!(
            hook["rules"],
            json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                    "resources": ["pods"], "scope": "Namespaced"}]),
            "{path}"
        );
    }
}
