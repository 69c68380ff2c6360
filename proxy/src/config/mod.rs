//! Validation and compilation of Envoy protos into the proxy's immutable config.

mod error;
pub mod supported;

pub use error::ConfigError;
