//! Resource identity, metadata and the two JSON renderings App Mesh returns:
//! the full `*Data` of describe calls and the `*Ref` of list calls.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::Kind;

/// Identity of a resource; for a mesh, `mesh` and `name` are equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub kind: Kind,
    pub mesh: String,
    /// The virtual router of a route or the virtual gateway of a gateway route.
    pub parent: Option<String>,
    pub name: String,
}

impl ResourceKey {
    pub fn mesh(name: &str) -> ResourceKey {
        ResourceKey {
            kind: Kind::Mesh,
            mesh: name.to_string(),
            parent: None,
            name: name.to_string(),
        }
    }

    pub fn in_mesh(kind: Kind, mesh: &str, name: &str) -> ResourceKey {
        ResourceKey {
            kind,
            mesh: mesh.to_string(),
            parent: None,
            name: name.to_string(),
        }
    }

    pub fn parent_key(&self) -> Option<ResourceKey> {
        let kind = self.kind.parent()?;
        let name = self.parent.as_deref()?;
        Some(ResourceKey::in_mesh(kind, &self.mesh, name))
    }

    /// `mesh/M/virtualRouter/R/route/X`: the resource part of the ARN and
    /// the form App Mesh proxies use as their node id.
    pub fn path(&self) -> String {
        let mut path = format!("mesh/{}", self.mesh);
        if self.kind == Kind::Mesh {
            return path;
        }
        if let (Some(pk), Some(parent)) = (self.kind.parent(), &self.parent) {
            path.push_str(&format!("/{}/{}", pk.segment(), parent));
        }
        path.push_str(&format!("/{}/{}", self.kind.segment(), self.name));
        path
    }

    pub fn describe(&self) -> String {
        match (&self.parent, self.kind) {
            (_, Kind::Mesh) => format!("Mesh {}", self.name),
            (Some(p), k) => format!(
                "{} {} in {} {} of mesh {}",
                k.type_name(),
                self.name,
                k.parent().map_or("", Kind::type_name),
                p,
                self.mesh
            ),
            (None, k) => format!("{} {} in mesh {}", k.type_name(), self.name, self.mesh),
        }
    }
}

/// `arn:aws:appmesh:REGION:ACCOUNT:mesh/...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arn {
    pub region: String,
    pub account: String,
    pub key: ResourceKey,
}

impl Arn {
    pub fn render(&self) -> String {
        format!(
            "arn:aws:appmesh:{}:{}:{}",
            self.region,
            self.account,
            self.key.path()
        )
    }

    /// `None` for anything that is not an App Mesh resource ARN.
    pub fn parse(arn: &str) -> Option<Arn> {
        let mut parts = arn.splitn(6, ':');
        let (prefix, partition, service) = (parts.next()?, parts.next()?, parts.next()?);
        if prefix != "arn" || partition.is_empty() || service != "appmesh" {
            return None;
        }
        let region = parts.next()?.to_string();
        let account = parts.next()?.to_string();
        let segments: Vec<&str> = parts.next()?.split('/').collect();
        let key = match segments.as_slice() {
            ["mesh", mesh] => ResourceKey::mesh(mesh),
            ["mesh", mesh, seg, name] => {
                let kind =
                    Kind::from_segment(seg).filter(|k| k.parent().is_none() && *k != Kind::Mesh)?;
                ResourceKey::in_mesh(kind, mesh, name)
            }
            ["mesh", mesh, pseg, parent, seg, name] => {
                let kind = Kind::from_segment(seg)?;
                if kind.parent()?.segment() != *pseg {
                    return None;
                }
                ResourceKey {
                    kind,
                    mesh: mesh.to_string(),
                    parent: Some(parent.to_string()),
                    name: name.to_string(),
                }
            }
            _ => return None,
        };
        if key.mesh.is_empty() || key.name.is_empty() {
            return None;
        }
        Some(Arn {
            region,
            account,
            key,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Metadata {
    pub arn: String,
    pub uid: String,
    pub version: i64,
    pub created_at: f64,
    pub last_updated_at: f64,
    pub owner: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub key: ResourceKey,
    pub metadata: Metadata,
    pub spec: Value,
    pub tags: Vec<Tag>,
}

impl Resource {
    fn identity(&self, out: &mut Map<String, Value>) {
        out.insert("meshName".into(), json!(self.key.mesh));
        if let (Some(pk), Some(parent)) = (self.key.kind.parent(), &self.key.parent) {
            out.insert(pk.name_field().into(), json!(parent));
        }
        out.insert(self.key.kind.name_field().into(), json!(self.key.name));
    }

    /// The `*Data` shape; `status` is `ACTIVE`, or `DELETED` in delete replies.
    pub fn data(&self, status: &str) -> Value {
        let mut out = Map::new();
        self.identity(&mut out);
        let m = &self.metadata;
        out.insert(
            "metadata".into(),
            json!({
                "arn": m.arn,
                "uid": m.uid,
                "version": m.version,
                "createdAt": m.created_at,
                "lastUpdatedAt": m.last_updated_at,
                "meshOwner": m.owner,
                "resourceOwner": m.owner,
            }),
        );
        out.insert("spec".into(), self.spec.clone());
        out.insert("status".into(), json!({ "status": status }));
        Value::Object(out)
    }

    /// The `*Ref` shape of list replies.
    pub fn reference(&self) -> Value {
        let mut out = Map::new();
        self.identity(&mut out);
        let m = &self.metadata;
        out.insert("arn".into(), json!(m.arn));
        out.insert("version".into(), json!(m.version));
        out.insert("createdAt".into(), json!(m.created_at));
        out.insert("lastUpdatedAt".into(), json!(m.last_updated_at));
        out.insert("meshOwner".into(), json!(m.owner));
        out.insert("resourceOwner".into(), json!(m.owner));
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_round_trip() {
        for path in [
            "mesh/m",
            "mesh/m/virtualNode/vn",
            "mesh/m/virtualRouter/r/route/x",
            "mesh/m/virtualGateway/g/gatewayRoute/x",
        ] {
            let text = format!("arn:aws:appmesh:us-west-2:000000000000:{path}");
            let arn = Arn::parse(&text).unwrap();
            assert_eq!(arn.render(), text);
        }
        for bad in [
            "arn:aws:s3:::bucket",
            "arn:aws:appmesh:r:a:mesh/m/route/x",
            "arn:aws:appmesh:r:a:mesh/m/virtualNode/r/route/x",
            "nonsense",
        ] {
            assert_eq!(Arn::parse(bad), None, "{bad}");
        }
    }
}
