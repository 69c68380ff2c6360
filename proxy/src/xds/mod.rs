//! The ADS client: subscribes to listeners, routes, clusters and endpoints
//! over one gRPC stream (state of the world or delta), validates each
//! response whole, ACKs or NACKs it as Envoy does, and swaps accepted config
//! in as a new snapshot.

mod apply;
mod client;
pub mod config;
pub(crate) mod resources;
mod stats;

pub use apply::Statics;
pub use client::spawn;
pub use config::AdsConfig;
