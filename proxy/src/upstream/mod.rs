//! Clusters, their endpoints, load balancing and connection pools.

pub mod cluster;
mod dns;
pub mod endpoint;
mod lb;
pub mod manager;
pub mod original_dst;
mod pool;

pub use cluster::Cluster;
pub use endpoint::Endpoint;
pub use manager::ClusterMap;
pub use original_dst::OriginalDestination;
pub use pool::{ConnectError, Pooled, Protocol};
