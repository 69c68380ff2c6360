//! Typed queries inside one transaction.

use rusqlite::{params, OptionalExtension, Row, Transaction};
use serde_json::Value;

use crate::inject::{LabelSelector, PodBinding};
use crate::model::{Kind, Metadata, Resource, ResourceKey, Tag};
use crate::xds::translate::{Instance, Instances, Owner};

const IDEMPOTENCY_WINDOW_SECS: f64 = 24.0 * 3600.0;

const COLUMNS: &str =
    "kind, mesh, parent, name, arn, uid, version, created_at, last_updated_at, owner, spec, tags";

pub struct Tx<'a> {
    txn: &'a Transaction<'a>,
    changed: bool,
    tokens_changed: bool,
}

fn corrupt(what: &str) -> rusqlite::Error {
    rusqlite::Error::InvalidColumnType(0, what.to_string(), rusqlite::types::Type::Text)
}

/// An instance owner as the `instances` table keys it: kind, scope (mesh
/// or namespace), name (virtual node or service).
fn owner_columns(owner: &Owner) -> (&'static str, &str, &str) {
    match owner {
        Owner::VirtualNode { mesh, node } => ("VirtualNode", mesh, node),
        Owner::CloudMap { namespace, service } => ("CloudMap", namespace, service),
    }
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<Resource> {
    let kind: String = row.get(0)?;
    let kind = Kind::from_type_name(&kind).ok_or_else(|| corrupt("kind"))?;
    let parent: String = row.get(2)?;
    let spec: String = row.get(10)?;
    let tags: String = row.get(11)?;
    Ok(Resource {
        key: ResourceKey {
            kind,
            mesh: row.get(1)?,
            parent: (!parent.is_empty()).then_some(parent),
            name: row.get(3)?,
        },
        metadata: Metadata {
            arn: row.get(4)?,
            uid: row.get(5)?,
            version: row.get(6)?,
            created_at: row.get(7)?,
            last_updated_at: row.get(8)?,
            owner: row.get(9)?,
        },
        spec: serde_json::from_str::<Value>(&spec).map_err(|_| corrupt("spec"))?,
        tags: serde_json::from_str::<Vec<Tag>>(&tags).map_err(|_| corrupt("tags"))?,
    })
}

impl<'a> Tx<'a> {
    pub(super) fn new(txn: &'a Transaction<'a>) -> Tx<'a> {
        Tx {
            txn,
            changed: false,
            tokens_changed: false,
        }
    }

    pub(super) fn changed(&self) -> bool {
        self.changed
    }

    /// Whether a node token was issued, replaced or revoked.
    pub(super) fn tokens_changed(&self) -> bool {
        self.tokens_changed
    }

    pub fn revision(&self) -> rusqlite::Result<u64> {
        let v: i64 = self
            .txn
            .query_row("SELECT value FROM revision WHERE id = 0", [], |r| r.get(0))?;
        Ok(u64::try_from(v).unwrap_or(0))
    }

    pub fn get(&self, key: &ResourceKey) -> rusqlite::Result<Option<Resource>> {
        self.txn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM resources WHERE kind = ?1 AND mesh = ?2 AND parent = ?3 AND name = ?4"
                ),
                params![
                    key.kind.type_name(),
                    key.mesh,
                    key.parent.as_deref().unwrap_or(""),
                    key.name
                ],
                from_row,
            )
            .optional()
    }

    pub fn exists(&self, key: &ResourceKey) -> rusqlite::Result<bool> {
        Ok(self.get(key)?.is_some())
    }

    /// One page of `kind` in `mesh` (and `parent`), in name order, starting
    /// after `after`; returns up to `limit` items.
    pub fn list(
        &self,
        kind: Kind,
        mesh: Option<&str>,
        parent: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> rusqlite::Result<Vec<Resource>> {
        let mut stmt = self.txn.prepare(&format!(
            "SELECT {COLUMNS} FROM resources WHERE kind = ?1 AND (?2 IS NULL OR mesh = ?2) \
             AND parent = ?3 AND name > ?4 ORDER BY name LIMIT ?5"
        ))?;
        let rows = stmt.query_map(
            params![
                kind.type_name(),
                mesh,
                parent.unwrap_or(""),
                after.unwrap_or(""),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            from_row,
        )?;
        rows.collect()
    }

    /// Every resource of a mesh except the mesh itself.
    pub fn in_mesh(&self, mesh: &str) -> rusqlite::Result<Vec<Resource>> {
        let mut stmt = self.txn.prepare(&format!(
            "SELECT {COLUMNS} FROM resources WHERE mesh = ?1 AND kind != 'Mesh' ORDER BY kind, parent, name"
        ))?;
        let rows = stmt.query_map(params![mesh], from_row)?;
        rows.collect()
    }

    pub fn all(&self) -> rusqlite::Result<Vec<Resource>> {
        let mut stmt = self.txn.prepare(&format!(
            "SELECT {COLUMNS} FROM resources ORDER BY mesh, kind, parent, name"
        ))?;
        let rows = stmt.query_map([], from_row)?;
        rows.collect()
    }

    pub fn insert(&mut self, r: &Resource) -> rusqlite::Result<()> {
        self.upsert("INSERT", r)
    }

    pub fn replace(&mut self, r: &Resource) -> rusqlite::Result<()> {
        self.upsert("INSERT OR REPLACE", r)
    }

    fn upsert(&mut self, verb: &str, r: &Resource) -> rusqlite::Result<()> {
        let spec = r.spec.to_string();
        let tags = serde_json::to_string(&r.tags).map_err(|_| corrupt("tags"))?;
        self.txn.execute(
            &format!("{verb} INTO resources ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
            params![
                r.key.kind.type_name(),
                r.key.mesh,
                r.key.parent.as_deref().unwrap_or(""),
                r.key.name,
                r.metadata.arn,
                r.metadata.uid,
                r.metadata.version,
                r.metadata.created_at,
                r.metadata.last_updated_at,
                r.metadata.owner,
                spec,
                tags
            ],
        )?;
        self.changed = true;
        Ok(())
    }

    pub fn delete(&mut self, key: &ResourceKey) -> rusqlite::Result<()> {
        self.txn.execute(
            "DELETE FROM resources WHERE kind = ?1 AND mesh = ?2 AND parent = ?3 AND name = ?4",
            params![
                key.kind.type_name(),
                key.mesh,
                key.parent.as_deref().unwrap_or(""),
                key.name
            ],
        )?;
        self.changed = true;
        Ok(())
    }

    /// Records which pods select a virtual node; whether anything changed.
    /// Bindings never change what proxies get: no revision bump.
    pub fn put_pod_binding(&mut self, b: &PodBinding) -> rusqlite::Result<bool> {
        let selector = b
            .pod_selector
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|_| corrupt("pod_selector"))?;
        let n = self.txn.execute(
            "INSERT INTO pod_bindings (mesh, virtual_node, namespace, name, pod_selector) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (mesh, virtual_node) DO UPDATE SET \
             namespace = excluded.namespace, name = excluded.name, pod_selector = excluded.pod_selector \
             WHERE namespace IS NOT excluded.namespace OR name IS NOT excluded.name \
             OR pod_selector IS NOT excluded.pod_selector",
            params![b.mesh_name, b.virtual_node_name, b.namespace, b.name, selector],
        )?;
        Ok(n > 0)
    }

    pub fn delete_pod_binding(&mut self, mesh: &str, virtual_node: &str) -> rusqlite::Result<()> {
        self.txn.execute(
            "DELETE FROM pod_bindings WHERE mesh = ?1 AND virtual_node = ?2",
            params![mesh, virtual_node],
        )?;
        Ok(())
    }

    pub fn pod_bindings(&self) -> rusqlite::Result<Vec<PodBinding>> {
        let mut stmt = self.txn.prepare(
            "SELECT mesh, virtual_node, namespace, name, pod_selector FROM pod_bindings \
             ORDER BY mesh, virtual_node",
        )?;
        let rows = stmt.query_map([], |r| {
            let selector: Option<String> = r.get(4)?;
            let pod_selector = selector
                .map(|s| serde_json::from_str::<LabelSelector>(&s))
                .transpose()
                .map_err(|_| corrupt("pod_selector"))?;
            Ok(PodBinding {
                mesh_name: r.get(0)?,
                virtual_node_name: r.get(1)?,
                namespace: r.get(2)?,
                name: r.get(3)?,
                pod_selector,
            })
        })?;
        rows.collect()
    }

    /// The digest and response recorded for a client token, if any.
    pub fn idempotent_reply(
        &self,
        operation: &str,
        token: &str,
    ) -> rusqlite::Result<Option<(String, String)>> {
        self.txn
            .query_row(
                "SELECT digest, response FROM idempotency WHERE operation = ?1 AND token = ?2",
                params![operation, token],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
    }

    /// Records the reply to a tokened request. Tokens older than a day are
    /// forgotten: clients retry within seconds, and the table must not grow
    /// with every write ever made.
    pub fn record_reply(
        &mut self,
        operation: &str,
        token: &str,
        digest: &str,
        response: &str,
    ) -> rusqlite::Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.txn.execute(
            "DELETE FROM idempotency WHERE recorded_at < ?1",
            params![now - IDEMPOTENCY_WINDOW_SECS],
        )?;
        self.txn.execute(
            "INSERT OR REPLACE INTO idempotency (operation, token, digest, response, recorded_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![operation, token, digest, response, now],
        )?;
        Ok(())
    }

    /// Records the hash of `node_id`'s token and the nonce it was derived
    /// from, replacing (revoking) any earlier one. Tokens never change
    /// resources: no revision bump.
    pub fn put_node_token(
        &mut self,
        node_id: &str,
        sha256: &str,
        nonce: &str,
        at: f64,
    ) -> rusqlite::Result<()> {
        self.txn.execute(
            "INSERT OR REPLACE INTO node_tokens (node_id, sha256, created_at, nonce) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![node_id, sha256, at, nonce],
        )?;
        self.tokens_changed = true;
        Ok(())
    }

    /// Whether there was a live token to revoke. The row stays, with an
    /// empty hash that no token matches, so that revoking the last token
    /// does not make token checks optional again.
    pub fn revoke_node_token(&mut self, node_id: &str) -> rusqlite::Result<bool> {
        let n = self.txn.execute(
            "UPDATE node_tokens SET sha256 = '' WHERE node_id = ?1 AND sha256 != ''",
            [node_id],
        )?;
        self.tokens_changed |= n > 0;
        Ok(n > 0)
    }

    /// Whether a token was ever issued (revoked ones included).
    pub fn node_tokens_issued(&self) -> rusqlite::Result<bool> {
        self.txn
            .query_row("SELECT EXISTS (SELECT 1 FROM node_tokens)", [], |r| {
                r.get(0)
            })
    }

    /// The hash and nonce of `node_id`'s live token.
    pub fn node_token(&self, node_id: &str) -> rusqlite::Result<Option<(String, String)>> {
        use rusqlite::OptionalExtension;
        self.txn
            .query_row(
                "SELECT sha256, nonce FROM node_tokens WHERE node_id = ?1 AND sha256 != ''",
                [node_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
    }

    /// `(node id, created at)` of every live token; never the hashes.
    pub fn node_tokens(&self) -> rusqlite::Result<Vec<(String, f64)>> {
        let mut stmt = self.txn.prepare(
            "SELECT node_id, created_at FROM node_tokens WHERE sha256 != '' ORDER BY node_id",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }

    /// Records a hand-registered instance, replacing the attributes of the
    /// one at the same owner, address and port; whether anything changed.
    /// Instances reach proxies through the registry, not the revision.
    pub fn put_instance(&mut self, owner: &Owner, i: &Instance) -> rusqlite::Result<bool> {
        let (kind, scope, name) = owner_columns(owner);
        let attributes = serde_json::to_string(&i.attributes).map_err(|_| corrupt("attributes"))?;
        let n = self.txn.execute(
            "INSERT INTO instances (owner_kind, owner_scope, owner_name, address, port, attributes) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (owner_kind, owner_scope, owner_name, address, port) \
             DO UPDATE SET attributes = excluded.attributes WHERE attributes != excluded.attributes",
            params![kind, scope, name, i.address, i.port, attributes],
        )?;
        Ok(n > 0)
    }

    /// Removes the instance of `owner` at `address:port`; whether there was one.
    pub fn delete_instance(
        &mut self,
        owner: &Owner,
        address: &str,
        port: u32,
    ) -> rusqlite::Result<bool> {
        let (kind, scope, name) = owner_columns(owner);
        let n = self.txn.execute(
            "DELETE FROM instances WHERE owner_kind = ?1 AND owner_scope = ?2 \
             AND owner_name = ?3 AND address = ?4 AND port = ?5",
            params![kind, scope, name, address, port],
        )?;
        Ok(n > 0)
    }

    /// Every hand-registered instance.
    pub fn instances(&self) -> rusqlite::Result<Instances> {
        let mut stmt = self.txn.prepare(
            "SELECT owner_kind, owner_scope, owner_name, address, port, attributes FROM instances",
        )?;
        let mut rows = stmt.query([])?;
        let mut out = Instances::new();
        while let Some(r) = rows.next()? {
            let kind: String = r.get(0)?;
            let scope: String = r.get(1)?;
            let name: String = r.get(2)?;
            let owner = match kind.as_str() {
                "VirtualNode" => Owner::node(&scope, &name),
                "CloudMap" => Owner::cloud_map(&scope, &name),
                _ => return Err(corrupt("owner_kind")),
            };
            let attributes: String = r.get(5)?;
            let instance = Instance {
                attributes: serde_json::from_str(&attributes).map_err(|_| corrupt("attributes"))?,
                ..Instance::new(r.get::<_, String>(3)?, r.get(4)?)
            };
            out.entry(owner).or_default().insert(instance);
        }
        Ok(out)
    }
}
