//! Clusters, their endpoints, load balancing and connection pools.

pub mod cluster;
mod dns;
pub mod endpoint;
mod lb;
pub mod manager;
mod pool;

pub use cluster::Cluster;
pub use endpoint::Endpoint;
pub use manager::ClusterMap;
pub use pool::{ConnectError, Pooled, Protocol};
