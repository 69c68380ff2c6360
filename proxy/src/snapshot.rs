//! The immutable config snapshot, swapped whole with arc-swap on every update.
//! A request loads it once and keeps it to its end; the next request sees the
//! next snapshot.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::listener::ListenerConfig;
use crate::router::RouteTable;
use crate::upstream::ClusterMap;

#[derive(Debug, Default)]
pub struct Snapshot {
    pub listeners: Vec<Arc<ListenerConfig>>,
    /// Shared with the previous snapshot when no cluster or endpoint changed.
    pub clusters: Arc<ClusterMap>,
    /// Route configurations delivered over RDS, by name.
    pub routes: HashMap<Arc<str>, Arc<RouteTable>>,
    /// The bootstrap as loaded, for `/config_dump`.
    pub bootstrap: Option<Arc<xds_protos::envoy::config::bootstrap::v3::Bootstrap>>,
    /// Resources that arrived over xDS, with the version that put each there.
    pub dynamic: Vec<Arc<DynamicResource>>,
}

#[derive(Debug)]
pub struct DynamicResource {
    pub type_url: &'static str,
    pub name: String,
    pub version: String,
    /// The resource as received, of type `type_url`.
    pub raw: bytes::Bytes,
}
