//! Per-node bootstrap tokens: a stolen token yields one node's identity, not
//! the mesh's. `trellis-control bootstrap` asks the API for its node's token
//! and puts it in the bootstrap as gRPC `initial_metadata` (`authorization:
//! Bearer TOKEN`).
//!
//! A token is an HMAC of its node id and a random nonce under a key kept in
//! the data dir ([`TokenKey`]); the database keeps the nonce and the token's
//! SHA-256, never the token. So the server can hand a node's current token
//! out again ([`issue_or_reuse`]: every replica of a node bootstraps with the
//! same one, and bootstrapping a second replica does not cut the first off),
//! while a copy of the database alone cannot impersonate proxies.
//!
//! Policy ([`Policy`]): by default every stream must carry its node's token
//! ([`Policy::Always`]); `auto` requires them once any token has been issued
//! (for upgrading a mesh that has none), `never` is for local experiments.

use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::store::Store;
use crate::xds::translate::NodeId;

/// When the ADS server demands a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Once the database holds any token.
    Auto,
    Always,
    Never,
}

/// Why a stream is refused; the message names the node, never the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("node {0}: no token (authorization: Bearer ...) was presented")]
    Missing(String),
    #[error("node {0}: the token is not this node's, or was revoked")]
    Mismatch(String),
}

impl Refusal {
    /// The reason as a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Missing(_) => "missing",
            Refusal::Mismatch(_) => "mismatch",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("node token key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("node token key {0}: expected 64 hex digits")]
    Malformed(PathBuf),
}

/// The key's file in the data dir.
pub const TOKEN_KEY_FILE: &str = "node-tokens.key";

/// The secret node tokens are derived from.
pub struct TokenKey([u8; 32]);

impl TokenKey {
    /// A fresh random key (for in-memory use, as in tests).
    pub fn generate() -> TokenKey {
        TokenKey(rand::random())
    }

    /// Reads the key at `path`, or writes a new one there (mode 0600) when
    /// the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<TokenKey, KeyError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut key = [0u8; 32];
                hex::decode_to_slice(text.trim(), &mut key)
                    .map_err(|_| KeyError::Malformed(path.to_path_buf()))?;
                Ok(TokenKey(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = TokenKey::generate();
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
                f.write_all(format!("{}\n", hex::encode(key.0)).as_bytes())
                    .map_err(io)?;
                f.sync_all().map_err(io)?;
                Ok(key)
            }
            Err(e) => Err(io(e)),
        }
    }

    fn derive(&self, node_id: &str, nonce: &str) -> String {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(node_id.as_bytes());
        mac.update(b"\n");
        mac.update(nonce.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// The key of the token in a node's Kubernetes Secret.
pub const K8S_SECRET_KEY: &str = "token";

/// The name of the Kubernetes Secret injected sidecars of `id` read their
/// token from: `trellis-token-MESH-NODE` made a DNS-1123 name (lower case;
/// other characters, as the `_` of `NAME_NAMESPACE` node names, become `-`),
/// cut short, and a hash of the id so two ids never share one.
pub fn k8s_secret_name(id: &NodeId) -> String {
    let kind = if id.gateway { "gw-" } else { "" };
    let readable: String = format!("{kind}{}-{}", id.mesh, id.name)
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .take(200)
        .collect();
    let hash = &digest(&id.render())[..8];
    format!("trellis-token-{}-{hash}", readable.trim_matches('-'))
}

/// The Secret holding `token` for `id`'s pods in `namespace`, as YAML.
pub fn k8s_secret(id: &NodeId, namespace: &str, token: &str) -> String {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": k8s_secret_name(id),
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "trellis-control"},
        },
        "type": "Opaque",
        "stringData": {K8S_SECRET_KEY: token},
    });
    serde_yaml::to_string(&doc).unwrap_or_default()
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new token for `id`, replacing (revoking) any earlier one.
pub fn issue(store: &Store, key: &TokenKey, id: &NodeId) -> Result<String, rusqlite::Error> {
    let node = id.render();
    store.write(|tx| {
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let token = key.derive(&node, &nonce);
        tx.put_node_token(&node, &digest(&token), &nonce, crate::xds::registry::now())?;
        Ok(token)
    })
}

/// `id`'s live token when the server can derive it again, else a new one;
/// the flag says it was reused. A token issued under another key (or by an
/// older release, without a nonce) is replaced.
pub fn issue_or_reuse(
    store: &Store,
    key: &TokenKey,
    id: &NodeId,
) -> Result<(String, bool), rusqlite::Error> {
    let node = id.render();
    store.write(|tx| {
        if let Some((hash, nonce)) = tx.node_token(&node)? {
            let token = key.derive(&node, &nonce);
            if !nonce.is_empty() && digest(&token) == hash {
                return Ok((token, true));
            }
        }
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let token = key.derive(&node, &nonce);
        tx.put_node_token(&node, &digest(&token), &nonce, crate::xds::registry::now())?;
        Ok((token, false))
    })
}

/// Whether `id` had a token, now revoked.
pub fn revoke(store: &Store, id: &NodeId) -> Result<bool, rusqlite::Error> {
    store.write(|tx| tx.revoke_node_token(&id.render()))
}

/// The node ids holding tokens, with when they were issued.
pub fn list(store: &Store) -> Result<Vec<(String, f64)>, rusqlite::Error> {
    store.read(|tx| tx.node_tokens())
}

/// The bearer token of an `authorization` header value.
pub fn bearer(header: &str) -> Option<&str> {
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
}

/// Checks a stream's token against its node id (as the proxy sent it).
pub fn check(
    store: &Store,
    policy: Policy,
    node_id: &str,
    token: Option<&str>,
) -> Result<Result<(), Refusal>, rusqlite::Error> {
    if policy == Policy::Never {
        return Ok(Ok(()));
    }
    // An ARN node id names the same node as its path.
    let key = NodeId::parse(node_id).map_or_else(|| node_id.to_string(), |n| n.render());
    let (hash, any) = store.read(|tx| {
        let hash = tx.node_token(&key)?.map(|(h, _)| h);
        let any = hash.is_some() || tx.node_tokens_issued()?;
        Ok::<_, rusqlite::Error>((hash, any))
    })?;
    if policy == Policy::Auto && !any {
        return Ok(Ok(()));
    }
    Ok(match (token, hash) {
        (None, _) => Err(Refusal::Missing(key)),
        (Some(t), Some(h)) if digest(t) == h => Ok(()),
        (Some(_), _) => Err(Refusal::Mismatch(key)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeId {
        NodeId {
            mesh: "m".into(),
            gateway: false,
            name: name.into(),
        }
    }

    #[test]
    fn a_token_opens_only_its_own_node_until_revoked() -> Result<(), rusqlite::Error> {
        let store = Store::open_in_memory().map_err(|_| rusqlite::Error::InvalidQuery)?;
        let a = "mesh/m/virtualNode/a";
        // No token anywhere yet: auto lets everyone in, always does not.
        assert_eq!(check(&store, Policy::Auto, a, None)?, Ok(()));
        assert!(check(&store, Policy::Always, a, None)?.is_err());
        let token = issue(&store, &TokenKey::generate(), &node("a"))?;
        assert_eq!(check(&store, Policy::Auto, a, Some(&token))?, Ok(()));
        assert_eq!(
            check(&store, Policy::Auto, a, None)?,
            Err(Refusal::Missing(a.into()))
        );
        let b = "mesh/m/virtualNode/b";
        assert_eq!(
            check(&store, Policy::Auto, b, Some(&token))?,
            Err(Refusal::Mismatch(b.into()))
        );
        assert_eq!(
            check(&store, Policy::Auto, b, None)?,
            Err(Refusal::Missing(b.into()))
        );
        assert_eq!(check(&store, Policy::Never, b, None)?, Ok(()));
        assert!(!list(&store)?
            .iter()
            .any(|(_, _)| format!("{:?}", list(&store)).contains(&token)));
        assert!(revoke(&store, &node("a"))?);
        assert!(check(&store, Policy::Always, a, Some(&token))?.is_err());
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        Ok(())
    }

    /// Every replica of a node bootstraps with the same token; issuing anew
    /// (or a new key, or a revocation) is what changes it.
    #[test]
    fn a_live_token_is_handed_out_again() -> Result<(), rusqlite::Error> {
        let store = Store::open_in_memory().map_err(|_| rusqlite::Error::InvalidQuery)?;
        let key = TokenKey::generate();
        let a = "mesh/m/virtualNode/a";
        let (first, reused) = issue_or_reuse(&store, &key, &node("a"))?;
        assert!(!reused);
        assert_eq!(
            issue_or_reuse(&store, &key, &node("a"))?,
            (first.clone(), true)
        );
        assert_eq!(check(&store, Policy::Always, a, Some(&first))?, Ok(()));
        let (other, reused) = issue_or_reuse(&store, &key, &node("b"))?;
        assert!(!reused && other != first);
        let second = issue(&store, &key, &node("a"))?;
        assert_ne!(second, first);
        assert_eq!(
            issue_or_reuse(&store, &key, &node("a"))?,
            (second.clone(), true)
        );
        let (third, reused) = issue_or_reuse(&store, &TokenKey::generate(), &node("a"))?;
        assert!(!reused && third != second);
        assert!(check(&store, Policy::Always, a, Some(&second))?.is_err());
        assert!(revoke(&store, &node("a"))?);
        let (fourth, reused) = issue_or_reuse(&store, &key, &node("a"))?;
        assert!(!reused && fourth != third);
        Ok(())
    }

    #[test]
    fn the_key_file_is_created_owner_only_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("node-tokens.key");
        let key = TokenKey::load_or_create(&path).expect("create");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = TokenKey::load_or_create(&path).expect("load");
        assert_eq!(key.derive("n", "x"), again.derive("n", "x"));
        std::fs::write(&path, "not hex").expect("write");
        assert!(matches!(
            TokenKey::load_or_create(&path),
            Err(KeyError::Malformed(_))
        ));
    }
}
