//! Clusters, their endpoints, load balancing and connection pools.

mod breaker;
pub mod cluster;
mod dns;
pub mod endpoint;
mod health;
pub mod lb;
pub mod manager;
mod outlier;
mod pool;
pub mod stats;

pub use cluster::{Cluster, TryResult};
pub use endpoint::Endpoint;
pub use manager::ClusterMap;
pub use pool::{ConnectError, Pooled, Protocol};
