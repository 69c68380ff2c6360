//! The 38 App Mesh operations over the store, independent of HTTP so that
//! the API, `serve --load` and local tests share one code path and one set
//! of checks. Inputs and outputs are the model's input and output objects.

mod pagination;
mod resources;
mod tags;

pub use resources::stored_spec;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ErrorKind};
use crate::inject::PodBinding;
use crate::model::{Kind, ResourceKey};
use crate::service_model::{check_rules, validate, ServiceModel};
use crate::store::{Store, Tx};

/// Where resource ARNs say they live.
#[derive(Debug, Clone)]
pub struct Identity {
    pub region: String,
    pub account: String,
}

#[derive(Clone)]
pub struct AppMesh {
    store: Arc<Store>,
    identity: Identity,
}

enum Verb {
    Create,
    Describe,
    Update,
    Delete,
    List,
}

fn parse_operation(op: &str) -> Option<(Verb, Kind)> {
    for (prefix, verb) in [
        ("Create", Verb::Create),
        ("Describe", Verb::Describe),
        ("Update", Verb::Update),
        ("Delete", Verb::Delete),
    ] {
        if let Some(kind) = op.strip_prefix(prefix).and_then(Kind::from_type_name) {
            return Some((verb, kind));
        }
    }
    let plural = op.strip_prefix("List")?;
    Kind::ALL
        .into_iter()
        .find(|k| {
            let f = k.list_field();
            plural.len() == f.len() && plural[..1] == f[..1].to_uppercase() && plural[1..] == f[1..]
        })
        .map(|k| (Verb::List, k))
}

fn now() -> f64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    ms as f64 / 1000.0
}

impl AppMesh {
    pub fn new(store: Arc<Store>, identity: Identity) -> AppMesh {
        AppMesh { store, identity }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Runs operation `op` on its full input object (URI, query and body
    /// members together) and returns its full output object.
    pub fn call(&self, op: &str, input: &Value) -> Result<Value, ApiError> {
        let model = ServiceModel::get();
        let operation = model.operation(op).ok_or_else(|| {
            ApiError::new(
                ErrorKind::UnknownOperation,
                format!("Unknown operation {op}"),
            )
        })?;
        if let Some(shape) = &operation.input {
            validate(model, &shape.shape, input, "")?;
            check_rules(model, &shape.shape, input, "")?;
        }
        // trellis holds one account's meshes; a mesh shared from another
        // account cannot exist here.
        if let Some(owner) = input["meshOwner"].as_str() {
            if owner != self.identity.account {
                return Err(ApiError::not_found(format!(
                    "meshOwner: no mesh owned by account {owner} is shared with {}",
                    self.identity.account
                )));
            }
        }
        match op {
            "TagResource" => self.write(op, input, |tx| self.tag_resource(tx, input)),
            "UntagResource" => self.write(op, input, |tx| self.untag_resource(tx, input)),
            "ListTagsForResource" => self.store.read(|tx| self.list_tags(tx, input)),
            _ => match parse_operation(op) {
                Some((Verb::Create, kind)) => {
                    self.write(op, input, |tx| self.create(tx, kind, input))
                }
                Some((Verb::Update, kind)) => {
                    self.write(op, input, |tx| self.update(tx, kind, input))
                }
                Some((Verb::Delete, kind)) => {
                    self.write(op, input, |tx| self.delete(tx, kind, input))
                }
                Some((Verb::Describe, kind)) => {
                    self.store.read(|tx| self.describe(tx, kind, input))
                }
                Some((Verb::List, kind)) => self.store.read(|tx| self.list(tx, kind, input)),
                None => Err(ApiError::new(
                    ErrorKind::UnknownOperation,
                    format!("Unknown operation {op}"),
                )),
            },
        }
    }

    /// Records which pods select a virtual node (trellis's own
    /// `PUT /trellis/v1/pod-selectors`); the node must exist. Whether it
    /// changed anything.
    pub fn put_pod_binding(&self, binding: &PodBinding) -> Result<bool, ApiError> {
        let key = ResourceKey::in_mesh(
            Kind::VirtualNode,
            &binding.mesh_name,
            &binding.virtual_node_name,
        );
        self.store.write(|tx| {
            if !tx.exists(&key)? {
                return Err(ApiError::not_found(format!(
                    "{} does not exist",
                    key.describe()
                )));
            }
            Ok(tx.put_pod_binding(binding)?)
        })
    }

    /// A write transaction honouring `clientToken`: a retry with the same
    /// token and request gets the first reply again; the same token with a
    /// different request is a ConflictException, as in App Mesh.
    fn write(
        &self,
        op: &str,
        input: &Value,
        f: impl FnOnce(&mut Tx<'_>) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let token = input["clientToken"].as_str().map(str::to_owned);
        self.store.write(|tx| {
            let Some(token) = token else {
                return f(tx);
            };
            let mut request = input.clone();
            if let Some(obj) = request.as_object_mut() {
                obj.remove("clientToken");
            }
            let digest = hex::encode(Sha256::digest(request.to_string().as_bytes()));
            if let Some((seen, reply)) = tx.idempotent_reply(op, &token)? {
                if seen != digest {
                    return Err(ApiError::conflict(format!(
                        "The clientToken {token} was already used for a different {op} request"
                    )));
                }
                return serde_json::from_str(&reply)
                    .map_err(|_| ApiError::internal("stored reply is unreadable"));
            }
            let reply = f(tx)?;
            tx.record_reply(op, &token, &digest, &reply.to_string())?;
            Ok(reply)
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn app_mesh() -> AppMesh {
        let store = Store::open_in_memory().expect("in-memory store");
        let identity = Identity {
            region: "us-west-2".into(),
            account: "000000000000".into(),
        };
        AppMesh::new(Arc::new(store), identity)
    }

    fn route(port: Option<u16>) -> Value {
        let mut spec = json!({"httpRoute": {"match": {"prefix": "/"},
            "action": {"weightedTargets": [{"virtualNode": "a", "weight": 1}]}}});
        if let Some(port) = port {
            spec["httpRoute"]["match"]["port"] = json!(port);
        }
        json!({"meshName": "m", "virtualRouterName": "r", "routeName": "x", "spec": spec})
    }

    #[test]
    fn routes_name_their_listener_when_the_router_has_several() {
        let api = app_mesh();
        let listener = |port: u16| json!({"portMapping": {"port": port, "protocol": "http"}});
        for (op, input) in [
            ("CreateMesh", json!({"meshName": "m"})),
            (
                "CreateVirtualNode",
                json!({"meshName": "m", "virtualNodeName": "a", "spec": {}}),
            ),
            (
                "CreateVirtualRouter",
                json!({"meshName": "m", "virtualRouterName": "r",
                    "spec": {"listeners": [listener(80), listener(81)]}}),
            ),
        ] {
            api.call(op, &input).expect(op);
        }
        let err = api.call("CreateRoute", &route(None)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadRequest);
        assert!(
            err.message
                .starts_with("spec.httpRoute.match.port: required, since VirtualRouter r"),
            "{}",
            err.message
        );
        let err = api.call("CreateRoute", &route(Some(82))).unwrap_err();
        assert!(
            err.message
                .starts_with("spec.httpRoute.match.port: 82 is not a listener port"),
            "{}",
            err.message
        );
        api.call("CreateRoute", &route(Some(81))).expect("port 81");
        let err = api.call("UpdateRoute", &route(None)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadRequest);
        let kept = api
            .call(
                "DescribeRoute",
                &json!({"meshName": "m", "virtualRouterName": "r", "routeName": "x"}),
            )
            .expect("describe");
        assert_eq!(kept["route"]["spec"]["httpRoute"]["match"]["port"], 81);
    }

    #[test]
    fn every_model_operation_is_dispatched() {
        for op in ServiceModel::get().operations.keys() {
            let known = matches!(
                op.as_str(),
                "TagResource" | "UntagResource" | "ListTagsForResource"
            ) || parse_operation(op).is_some();
            assert!(known, "{op}");
        }
    }
}
