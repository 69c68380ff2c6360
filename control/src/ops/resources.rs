//! Create, describe, update, delete and list for all seven kinds, with the
//! existence and reference rules App Mesh enforces.

use serde_json::{json, Value};

use super::{now, pagination, AppMesh};
use crate::error::ApiError;
use crate::model::{
    references, unsupported_feature, Arn, Kind, Metadata, Resource, ResourceKey, Tag,
};
use crate::store::Tx;

fn field<'a>(input: &'a Value, name: &str) -> Result<&'a str, ApiError> {
    input[name]
        .as_str()
        .ok_or_else(|| ApiError::bad_request(format!("{name}: required field is missing")))
}

fn key_from_input(kind: Kind, input: &Value) -> Result<ResourceKey, ApiError> {
    let mesh = field(input, "meshName")?;
    let parent = match kind.parent() {
        Some(p) => Some(field(input, p.name_field())?.to_string()),
        None => None,
    };
    Ok(ResourceKey {
        kind,
        mesh: mesh.to_string(),
        parent,
        name: field(input, kind.name_field())?.to_string(),
    })
}

/// The spec as stored and reported. App Mesh reports the mesh egress filter
/// it applies even when none was given; callers comparing specs (`apply`
/// deciding whether anything changed) must see the same form.
pub fn stored_spec(kind: Kind, spec: Option<&Value>) -> Value {
    let mut spec = spec.cloned().unwrap_or_else(|| json!({}));
    if kind == Kind::Mesh {
        if let Some(obj) = spec.as_object_mut() {
            obj.entry("egressFilter")
                .or_insert_with(|| json!({"type": "DROP_ALL"}));
        }
    }
    spec
}

/// Rules the model cannot express: one protocol per route, and no
/// AWS-only features.
fn check_spec(kind: Kind, spec: &Value) -> Result<(), ApiError> {
    if let Some((path, why)) = unsupported_feature(spec, "spec") {
        return Err(ApiError::bad_request(format!("{path}: {why}")));
    }
    let protocols: &[&str] = match kind {
        Kind::Route => &["httpRoute", "http2Route", "grpcRoute", "tcpRoute"],
        Kind::GatewayRoute => &["httpRoute", "http2Route", "grpcRoute"],
        _ => return Ok(()),
    };
    let set = protocols.iter().filter(|p| !spec[**p].is_null()).count();
    if set != 1 {
        return Err(ApiError::bad_request(format!(
            "spec: exactly one of [{}] must be set, found {set}",
            protocols.join(", ")
        )));
    }
    Ok(())
}

pub(super) fn parse_tags(value: &Value) -> Result<Vec<Tag>, ApiError> {
    if value.is_null() {
        return Ok(Vec::new());
    }
    let tags: Vec<Tag> = serde_json::from_value(value.clone())
        .map_err(|e| ApiError::bad_request(format!("tags: {e}")))?;
    let mut merged: Vec<Tag> = Vec::new();
    for tag in tags {
        match merged.iter_mut().find(|t| t.key == tag.key) {
            Some(existing) => existing.value = tag.value,
            None => merged.push(tag),
        }
    }
    Ok(merged)
}

impl AppMesh {
    fn arn(&self, key: &ResourceKey) -> String {
        Arn {
            region: self.identity.region.clone(),
            account: self.identity.account.clone(),
            key: key.clone(),
        }
        .render()
    }

    /// The mesh and, for routes, the parent must exist before anything is
    /// read or written inside them.
    fn require_container(&self, tx: &Tx<'_>, key: &ResourceKey) -> Result<(), ApiError> {
        if key.kind != Kind::Mesh && !tx.exists(&ResourceKey::mesh(&key.mesh))? {
            return Err(ApiError::not_found(format!(
                "meshName: Mesh {} not found",
                key.mesh
            )));
        }
        if let Some(parent) = key.parent_key() {
            if !tx.exists(&parent)? {
                return Err(ApiError::not_found(format!(
                    "{}: {} not found",
                    parent.kind.name_field(),
                    parent.describe()
                )));
            }
        }
        Ok(())
    }

    fn require_references(tx: &Tx<'_>, key: &ResourceKey, spec: &Value) -> Result<(), ApiError> {
        for r in references(key, spec) {
            if !tx.exists(&r.target)? {
                return Err(ApiError::not_found(format!(
                    "{}: {} not found",
                    r.field,
                    r.target.describe()
                )));
            }
        }
        Ok(())
    }

    /// A route or gateway route names the listener of its router or gateway
    /// it serves (`match.port`): App Mesh required one when there are
    /// several ("Route must define a port match criteria if the Virtual
    /// Router has multiple listeners"), and a port no listener has would
    /// match nothing.
    fn require_listener(tx: &Tx<'_>, key: &ResourceKey, spec: &Value) -> Result<(), ApiError> {
        let Some(parent) = key.parent_key() else {
            return Ok(());
        };
        let Some((protocol, route)) = ["httpRoute", "http2Route", "grpcRoute", "tcpRoute"]
            .iter()
            .find_map(|p| spec.get(*p).map(|r| (*p, r)))
        else {
            return Ok(());
        };
        let Some(parent_spec) = tx.get(&parent)?.map(|r| r.spec) else {
            return Ok(());
        };
        let ports: Vec<i64> = parent_spec["listeners"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["portMapping"]["port"].as_i64())
            .collect();
        let field = format!("spec.{protocol}.match.port");
        match route["match"]["port"].as_i64() {
            None if ports.len() > 1 => Err(ApiError::bad_request(format!(
                "{field}: required, since {} has {} listeners",
                parent.describe(),
                ports.len()
            ))),
            Some(port) if !ports.contains(&port) => Err(ApiError::bad_request(format!(
                "{field}: {port} is not a listener port of {}",
                parent.describe()
            ))),
            _ => Ok(()),
        }
    }

    fn existing(tx: &Tx<'_>, key: &ResourceKey) -> Result<Resource, ApiError> {
        tx.get(key)?
            .ok_or_else(|| ApiError::not_found(format!("{} not found", key.describe())))
    }

    pub(super) fn create(
        &self,
        tx: &mut Tx<'_>,
        kind: Kind,
        input: &Value,
    ) -> Result<Value, ApiError> {
        let key = key_from_input(kind, input)?;
        let spec = stored_spec(kind, input.get("spec"));
        check_spec(kind, &spec)?;
        let tags = parse_tags(&input["tags"])?;
        self.require_container(tx, &key)?;
        if tx.exists(&key)? {
            return Err(ApiError::conflict(format!(
                "{} already exists",
                key.describe()
            )));
        }
        Self::require_listener(tx, &key, &spec)?;
        Self::require_references(tx, &key, &spec)?;
        let at = now();
        let resource = Resource {
            metadata: Metadata {
                arn: self.arn(&key),
                uid: uuid::Uuid::new_v4().to_string(),
                version: 1,
                created_at: at,
                last_updated_at: at,
                owner: self.identity.account.clone(),
            },
            key,
            spec,
            tags,
        };
        tx.insert(&resource)?;
        Ok(json!({ kind.segment(): resource.data("ACTIVE") }))
    }

    pub(super) fn describe(
        &self,
        tx: &mut Tx<'_>,
        kind: Kind,
        input: &Value,
    ) -> Result<Value, ApiError> {
        let key = key_from_input(kind, input)?;
        self.require_container(tx, &key)?;
        let resource = Self::existing(tx, &key)?;
        Ok(json!({ kind.segment(): resource.data("ACTIVE") }))
    }

    pub(super) fn update(
        &self,
        tx: &mut Tx<'_>,
        kind: Kind,
        input: &Value,
    ) -> Result<Value, ApiError> {
        let key = key_from_input(kind, input)?;
        self.require_container(tx, &key)?;
        let mut resource = Self::existing(tx, &key)?;
        let spec = match kind {
            Kind::Mesh if input["spec"].is_null() => resource.spec.clone(),
            _ => stored_spec(kind, input.get("spec")),
        };
        check_spec(kind, &spec)?;
        Self::require_listener(tx, &key, &spec)?;
        Self::require_references(tx, &key, &spec)?;
        resource.spec = spec;
        resource.metadata.version += 1;
        resource.metadata.last_updated_at = now();
        tx.replace(&resource)?;
        Ok(json!({ kind.segment(): resource.data("ACTIVE") }))
    }

    pub(super) fn delete(
        &self,
        tx: &mut Tx<'_>,
        kind: Kind,
        input: &Value,
    ) -> Result<Value, ApiError> {
        let key = key_from_input(kind, input)?;
        self.require_container(tx, &key)?;
        let resource = Self::existing(tx, &key)?;
        let contents = tx.in_mesh(&key.mesh)?;
        let blockers: Vec<String> = contents
            .iter()
            .filter(|r| {
                let contained = kind == Kind::Mesh
                    || (r.key.kind.parent() == Some(kind)
                        && r.key.parent.as_deref() == Some(key.name.as_str()));
                contained || references(&r.key, &r.spec).iter().any(|x| x.target == key)
            })
            .map(|r| r.key.describe())
            .collect();
        if !blockers.is_empty() {
            let shown: Vec<&str> = blockers.iter().take(10).map(String::as_str).collect();
            let more = match blockers.len().saturating_sub(shown.len()) {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            return Err(ApiError::in_use(format!(
                "{} is still in use by: {}{more}",
                key.describe(),
                shown.join(", ")
            )));
        }
        tx.delete(&key)?;
        if kind == Kind::VirtualNode {
            tx.delete_pod_binding(&key.mesh, &key.name)?;
        }
        Ok(json!({ kind.segment(): resource.data("DELETED") }))
    }

    pub(super) fn list(
        &self,
        tx: &mut Tx<'_>,
        kind: Kind,
        input: &Value,
    ) -> Result<Value, ApiError> {
        let limit = pagination::limit(input);
        let after = pagination::position(input)?;
        let (mesh, parent) = if kind == Kind::Mesh {
            (None, None)
        } else {
            let mesh = field(input, "meshName")?;
            let parent = match kind.parent() {
                Some(p) => Some(field(input, p.name_field())?),
                None => None,
            };
            let container = ResourceKey {
                kind,
                mesh: mesh.to_string(),
                parent: parent.map(str::to_string),
                name: String::new(),
            };
            self.require_container(tx, &container)?;
            (Some(mesh), parent)
        };
        let mut page = tx.list(kind, mesh, parent, after.as_deref(), limit + 1)?;
        let next = if page.len() > limit {
            page.truncate(limit);
            page.last().map(|r| pagination::encode(&r.key.name))
        } else {
            None
        };
        let refs: Vec<Value> = page.iter().map(Resource::reference).collect();
        let mut out = json!({ kind.list_field(): refs });
        if let Some(token) = next {
            out["nextToken"] = json!(token);
        }
        Ok(out)
    }
}
