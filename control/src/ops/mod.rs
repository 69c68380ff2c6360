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
    use super::*;

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
