//! Per-node bootstrap tokens: a stolen token yields one node's identity, not
//! the mesh's. `trellis-control bootstrap` asks the API for a token and puts
//! it in the bootstrap as gRPC `initial_metadata` (`authorization: Bearer
//! TOKEN`); the database keeps only its SHA-256, so a copy of the database
//! cannot impersonate proxies.
//!
//! Policy ([`Policy`]): by default tokens are required once any token has
//! been issued, so upgrading a mesh that has none keeps its proxies connected
//! until the operator issues the first one; revoking tokens never turns the
//! requirement off again.

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

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token for `id`, replacing any earlier one.
pub fn issue(store: &Store, id: &NodeId) -> Result<String, rusqlite::Error> {
    let bytes: [u8; 32] = rand::random();
    let token = hex::encode(bytes);
    let at = crate::xds::registry::now();
    store.write(|tx| tx.put_node_token(&id.render(), &digest(&token), at))?;
    Ok(token)
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
        let hash = tx.node_token_hash(&key)?;
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
        let token = issue(&store, &node("a"))?;
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
}
