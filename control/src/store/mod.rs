//! Durable state in SQLite. Every write runs in one transaction that is
//! committed (WAL, `synchronous=FULL`) before the caller answers, so an
//! acknowledged write survives a kill -9 or power loss; a rejected request
//! rolls back and changes nothing.

mod tx;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;
use tokio::sync::watch;

use crate::model::Resource;

pub use tx::Tx;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL,
    mesh TEXT NOT NULL,
    parent TEXT NOT NULL,
    name TEXT NOT NULL,
    arn TEXT NOT NULL,
    uid TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    last_updated_at REAL NOT NULL,
    owner TEXT NOT NULL,
    spec TEXT NOT NULL,
    tags TEXT NOT NULL,
    PRIMARY KEY (kind, mesh, parent, name)
);
CREATE INDEX IF NOT EXISTS resources_by_mesh ON resources (mesh);
CREATE TABLE IF NOT EXISTS idempotency (
    operation TEXT NOT NULL,
    token TEXT NOT NULL,
    digest TEXT NOT NULL,
    response TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (operation, token)
);
CREATE TABLE IF NOT EXISTS revision (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO revision (id, value) VALUES (0, 0);
CREATE TABLE IF NOT EXISTS pod_bindings (
    mesh TEXT NOT NULL,
    virtual_node TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    pod_selector TEXT,
    PRIMARY KEY (mesh, virtual_node)
);
CREATE TABLE IF NOT EXISTS node_tokens (
    node_id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    nonce TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS instances (
    owner_kind TEXT NOT NULL,
    owner_scope TEXT NOT NULL,
    owner_name TEXT NOT NULL,
    address TEXT NOT NULL,
    port INTEGER NOT NULL,
    attributes TEXT NOT NULL,
    PRIMARY KEY (owner_kind, owner_scope, owner_name, address, port)
);
";

/// Bumped whenever the schema changes, so an older binary refuses a
/// database it would misread instead of corrupting it.
const SCHEMA_VERSION: i64 = 3;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("the database {path} has schema version {found}, newer than this trellis-control understands ({SCHEMA_VERSION}); use a newer release")]
    TooNew { path: String, found: i64 },
}

/// Every resource at one revision, read in a single transaction: the input
/// the xDS translation turns into per-proxy resources.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub revision: u64,
    pub resources: Vec<Resource>,
}

/// Brings a database of an older schema up to this one.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    // Version 3: a token's nonce, from which the server derives it again.
    let has_nonce: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('node_tokens') WHERE name = 'nonce')",
        [],
        |r| r.get(0),
    )?;
    if !has_nonce {
        conn.execute_batch("ALTER TABLE node_tokens ADD COLUMN nonce TEXT NOT NULL DEFAULT ''")?;
    }
    Ok(())
}

pub struct Store {
    conn: Mutex<Connection>,
    revision: watch::Sender<u64>,
    /// Bumped when node tokens change, so that open ADS streams check
    /// theirs again.
    tokens: watch::Sender<u64>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(open_err)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.display().to_string(),
                found,
            });
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        Store::init(conn).map_err(open_err)
    }

    /// Writes a consistent copy of the database at `src` to `dst` (a new
    /// file) with `VACUUM INTO`, which reads one snapshot: the server may
    /// keep writing meanwhile.
    pub fn backup(src: &Path, dst: &Path) -> Result<(), StoreError> {
        let err = |source| StoreError::Open {
            path: src.display().to_string(),
            source,
        };
        let conn = Connection::open_with_flags(src, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.execute("VACUUM INTO ?1", [dst.to_string_lossy()])
            .map_err(err)?;
        Ok(())
    }

    pub fn open_in_memory() -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: ":memory:".into(),
            source,
        };
        let conn = Connection::open_in_memory().map_err(open_err)?;
        Store::init(conn).map_err(open_err)
    }

    fn init(conn: Connection) -> Result<Store, rusqlite::Error> {
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        let revision: i64 =
            conn.query_row("SELECT value FROM revision WHERE id = 0", [], |r| r.get(0))?;
        let (revision, _) = watch::channel(u64::try_from(revision).unwrap_or(0));
        Ok(Store {
            conn: Mutex::new(conn),
            revision,
            tokens: watch::Sender::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-written
        // transaction behind (it is rolled back on drop), so the connection
        // is still sound.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in a read transaction.
    pub fn read<T, E: From<rusqlite::Error>>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut conn = self.lock();
        let txn = conn.transaction()?;
        let mut tx = Tx::new(&txn);
        f(&mut tx)
    }

    /// Runs `f` in a write transaction: committed durably if `f` succeeds,
    /// rolled back otherwise. A transaction that changed a resource bumps
    /// the revision, which wakes every subscriber.
    pub fn write<T, E: From<rusqlite::Error>>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut conn = self.lock();
        let txn = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut tx = Tx::new(&txn);
        let out = f(&mut tx)?;
        let changed = tx.changed();
        let tokens_changed = tx.tokens_changed();
        let revision = if changed {
            txn.execute("UPDATE revision SET value = value + 1 WHERE id = 0", [])?;
            let v: i64 =
                txn.query_row("SELECT value FROM revision WHERE id = 0", [], |r| r.get(0))?;
            Some(v)
        } else {
            None
        };
        txn.commit()?;
        if let Some(v) = revision {
            self.revision.send_replace(u64::try_from(v).unwrap_or(0));
        }
        if tokens_changed {
            self.tokens.send_modify(|n| *n += 1);
        }
        Ok(out)
    }

    /// The revision of the last committed change.
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// A receiver that changes whenever a node token is issued, replaced or
    /// revoked.
    pub fn subscribe_tokens(&self) -> watch::Receiver<u64> {
        self.tokens.subscribe()
    }

    /// A receiver whose value is the revision of the last committed change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    pub fn snapshot(&self) -> Result<Snapshot, rusqlite::Error> {
        self.read(|tx| {
            Ok(Snapshot {
                revision: tx.revision()?,
                resources: tx.all()?,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::{Kind, Metadata, ResourceKey};

    fn mesh(name: &str) -> Resource {
        Resource {
            key: ResourceKey::mesh(name),
            metadata: Metadata {
                arn: format!("arn:aws:appmesh:r:a:mesh/{name}"),
                uid: "u".into(),
                version: 1,
                created_at: 1.5,
                last_updated_at: 1.5,
                owner: "a".into(),
            },
            spec: json!({}),
            tags: vec![],
        }
    }

    #[test]
    fn refuses_a_database_from_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        assert!(matches!(Store::open(&path), Err(StoreError::TooNew { .. })));
    }

    #[test]
    fn committed_writes_bump_the_revision_and_rollbacks_do_not() {
        let store = Store::open_in_memory().unwrap();
        let rx = store.subscribe();
        store
            .write(|tx| tx.insert(&mesh("a")).map_err(crate::ApiError::from))
            .unwrap();
        assert_eq!(*rx.borrow(), 1);
        let failed: Result<(), crate::ApiError> = store.write(|tx| {
            tx.insert(&mesh("b"))?;
            Err(crate::ApiError::bad_request("no"))
        });
        assert!(failed.is_err());
        let snap = store.snapshot().unwrap();
        assert_eq!(snap.revision, 1);
        assert_eq!(snap.resources.len(), 1);
        assert_eq!(snap.resources[0].key.kind, Kind::Mesh);
    }
}
