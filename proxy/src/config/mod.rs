//! Validation and compilation of Envoy protos into the proxy's immutable config.
//! Everything here runs once per config update, never per request.

pub mod address;
pub mod cluster;
pub mod config_source;
pub mod connection_limit;
pub mod duration;
mod error;
pub mod hcm;
pub mod listener;
pub mod listener_filters;
pub mod resilience;
pub mod supported;
#[cfg(test)]
mod supported_doc;
pub mod tcp_proxy;

pub use error::ConfigError;
