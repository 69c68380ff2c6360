//! `envoy.filters.network.connection_limit` at run time: a count of the
//! chain's open connections; one over the limit is (after `delay`) closed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::connection_limit::ConnectionLimitConfig;
use crate::shared::Shared;
use crate::stats::ConnectionLimitStats;

#[derive(Debug)]
pub struct ConnectionLimit {
    config: ConnectionLimitConfig,
    open: AtomicU64,
    stats: Arc<ConnectionLimitStats>,
}

/// A connection counted against the limit while it lives.
#[derive(Debug)]
pub struct Permit(Arc<ConnectionLimit>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.stats.active_connections.dec();
    }
}

impl ConnectionLimit {
    pub fn new(config: ConnectionLimitConfig, shared: &Shared) -> ConnectionLimit {
        ConnectionLimit {
            stats: shared.connection_limit_stats(&config.stat_prefix),
            config,
            open: AtomicU64::new(0),
        }
    }

    /// `None` when the chain is full: the caller closes the connection after
    /// [`ConnectionLimit::refuse`].
    pub fn admit(self: &Arc<Self>) -> Option<Permit> {
        let now = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.stats.active_connections.inc();
        let permit = Permit(self.clone());
        (now <= self.config.max_connections).then_some(permit)
    }

    /// Counts the refusal and waits out the configured delay.
    pub async fn refuse(&self) {
        self.stats.limited_connections.inc();
        if let Some(d) = self.config.delay {
            tokio::time::sleep(d).await;
        }
    }
}
