//! AdmissionReview in, AdmissionReview out: a pure function of the request
//! body, the mesh and the settings. Every answer allows the pod: a request
//! the injector cannot make sense of, or a pod whose virtual node cannot be
//! found, is let through unchanged with a warning that says why (App Mesh
//! refused such pods, which stalls whole deployments on one typo).

use base64::Engine;
use serde_json::{json, Value};

use super::mesh::MeshView;
use super::patch::Plan;
use super::pod::{opt, Opt, Options, Pod};
use super::settings::Settings;

const V1: &str = "admission.k8s.io/v1";
const V1BETA1: &str = "admission.k8s.io/v1beta1";

/// What a namespace does with pods that carry no
/// `appmesh.k8s.aws/sidecarInjectorWebhook` annotation. Admission requests
/// do not carry namespace labels, so the MutatingWebhookConfiguration's
/// `namespaceSelector` sends each labelled namespace to its own path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceDefault {
    /// Labelled `enabled`: inject unless the pod opts out.
    Enabled,
    /// Labelled `disabled`: inject only pods that opt in.
    Disabled,
}

/// The answer, and what happened, for the log.
#[derive(Debug)]
pub struct Admission {
    /// The AdmissionReview to send back.
    pub review: Value,
    pub pod: String,
    /// `mesh/M/virtualNode/N` when the pod was injected.
    pub injected: Option<String>,
    pub warnings: Vec<String>,
}

/// The request members the injector reads.
struct Request {
    api_version: &'static str,
    uid: String,
    namespace: String,
    object: Value,
}

/// A request that cannot be answered with a patch; `uid` as far as it
/// could be read, so the API server can still match the answer.
struct Malformed {
    api_version: &'static str,
    uid: String,
    message: String,
}

fn parse_request(body: &[u8]) -> Result<Request, Malformed> {
    let mut out = Malformed {
        api_version: V1,
        uid: String::new(),
        message: String::new(),
    };
    let fail = |mut m: Malformed, message: String| {
        m.message = message;
        Err(m)
    };
    let review: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return fail(out, format!("the body is not JSON: {e}")),
    };
    if !review.is_object() {
        return fail(out, "the body is not an AdmissionReview object".into());
    }
    let request = &review["request"];
    if let Some(uid) = request["uid"].as_str() {
        out.uid = uid.to_string();
    }
    out.api_version = match review["apiVersion"].as_str() {
        Some(V1) => V1,
        Some(V1BETA1) => V1BETA1,
        Some(other) => return fail(out, format!("apiVersion '{other}' is not {V1}")),
        None => return fail(out, format!("apiVersion is missing (expected {V1})")),
    };
    if review["kind"] != "AdmissionReview" {
        return fail(out, "kind is not AdmissionReview".into());
    }
    if !request.is_object() {
        return fail(out, "request is missing".into());
    }
    if out.uid.is_empty() {
        return fail(out, "request.uid is missing".into());
    }
    let kind = &request["kind"];
    if kind["kind"] != "Pod"
        || kind["version"] != "v1"
        || !kind["group"].as_str().unwrap_or("").is_empty()
    {
        return fail(
            out,
            format!("request.kind is {kind}, not a v1 Pod; the webhook should only get pods"),
        );
    }
    if request["operation"] != "CREATE" {
        return fail(
            out,
            format!(
                "request.operation is {}; sidecars are injected on CREATE only",
                request["operation"]
            ),
        );
    }
    let namespace = request["namespace"]
        .as_str()
        .or_else(|| request["object"]["metadata"]["namespace"].as_str())
        .unwrap_or("default")
        .to_string();
    Ok(Request {
        api_version: out.api_version,
        uid: out.uid,
        namespace,
        object: request["object"].clone(),
    })
}

fn review(api_version: &str, uid: &str, patch: Option<&[Value]>, warnings: &[String]) -> Value {
    let mut response = json!({"uid": uid, "allowed": true});
    if let Some(ops) = patch {
        let text = Value::Array(ops.to_vec()).to_string();
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
    if !warnings.is_empty() {
        let tagged: Vec<String> = warnings
            .iter()
            .map(|w| format!("trellis sidecar injector: {w}"))
            .collect();
        response["warnings"] = json!(tagged);
    }
    json!({"apiVersion": api_version, "kind": "AdmissionReview", "response": response})
}

/// Answers one AdmissionReview body. `mesh` is an error when the store
/// could not be read; pods that would be injected are then let through
/// with a warning that says so.
pub fn admit(
    body: &[u8],
    mesh: Result<&MeshView, &str>,
    settings: &Settings,
    namespace_default: NamespaceDefault,
) -> Admission {
    let request = match parse_request(body) {
        Ok(r) => r,
        Err(m) => {
            let warnings = vec![format!("malformed admission review: {}", m.message)];
            return Admission {
                review: review(m.api_version, &m.uid, None, &warnings),
                pod: String::new(),
                injected: None,
                warnings,
            };
        }
    };
    let answer =
        |pod: String, patch: Option<(&[Value], String)>, warnings: Vec<String>| Admission {
            review: review(
                request.api_version,
                &request.uid,
                patch.as_ref().map(|(ops, _)| *ops),
                &warnings,
            ),
            pod,
            injected: patch.map(|(_, node)| node),
            warnings,
        };
    let pod = match Pod::parse(&request.object) {
        Ok(p) => p,
        Err(e) => return answer(String::new(), None, vec![format!("not injected: {e}")]),
    };
    let name = format!("{}/{}", request.namespace, pod.display_name);
    match opt(&pod) {
        Ok(Opt::Out) => return answer(name, None, vec![]),
        Ok(Opt::Default) if namespace_default == NamespaceDefault::Disabled => {
            return answer(name, None, vec![])
        }
        Ok(_) => {}
        Err(e) => return answer(name, None, vec![format!("not injected: {e}")]),
    }
    if pod.injected() {
        return answer(name, None, vec![]);
    }
    let mesh = match mesh {
        Ok(m) => m,
        Err(e) => {
            return answer(
                name,
                None,
                vec![format!("not injected: the mesh could not be read: {e}")],
            )
        }
    };
    let node = match mesh.designate(&pod, &request.namespace) {
        Ok(Some(node)) => node,
        Ok(None) => {
            // App Mesh refused such pods outright; a warning is enough.
            let why = format!(
                "not injected: no VirtualNode in namespace {} has a podSelector matching \
                 this pod's labels (or name one with appmesh.k8s.aws/virtualNode)",
                request.namespace
            );
            return answer(name, None, vec![why]);
        }
        Err(e) => return answer(name, None, vec![format!("not injected: {e}")]),
    };
    let options = match Options::parse(&pod) {
        Ok(o) => o,
        Err(e) => return answer(name, None, vec![format!("not injected: {e}")]),
    };
    let plan = Plan {
        node,
        options: &options,
        settings,
    };
    let ops = plan.patch(&pod);
    answer(name, Some((&ops, node.id())), vec![])
}
