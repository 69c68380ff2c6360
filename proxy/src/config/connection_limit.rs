//! `envoy.filters.network.connection_limit` → [`ConnectionLimitConfig`]: at
//! most `max_connections` connections at once on a filter chain.

use std::sync::Arc;
use std::time::Duration;

use xds_protos::envoy::extensions::filters::network::connection_limit::v3::ConnectionLimit;

use super::{duration, ConfigError};

pub const TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimitConfig {
    pub stat_prefix: Arc<str>,
    pub max_connections: u64,
    /// How long a refused connection is held before it is closed.
    pub delay: Option<Duration>,
}

impl ConnectionLimitConfig {
    pub fn compile(c: &ConnectionLimit) -> Result<ConnectionLimitConfig, ConfigError> {
        if c.stat_prefix.is_empty() {
            return Err(ConfigError::new("stat_prefix", "stat_prefix is required"));
        }
        let max_connections = c
            .max_connections
            .filter(|m| *m >= 1)
            .ok_or_else(|| ConfigError::new("max_connections", "must be at least 1"))?;
        Ok(ConnectionLimitConfig {
            stat_prefix: Arc::from(c.stat_prefix.as_str()),
            max_connections,
            delay: duration::timeout(c.delay.as_ref(), None, "delay")?,
        })
    }
}
