//! Clusters, their endpoints, load balancing and connection pools.

mod breaker;
pub mod cluster;
mod dns;
pub mod endpoint;
mod health;
pub mod lb;
pub mod manager;
pub mod original_dst;
mod outlier;
mod pool;
pub mod stats;

pub use cluster::{Cluster, TryResult};
pub use endpoint::Endpoint;
pub use manager::ClusterMap;
pub use original_dst::OriginalDestination;
pub use pool::{ConnectError, Pooled, Protocol};
