//! Circuit breakers: per-cluster limits on requests, pending requests,
//! retries and connections. Each is an atomic count checked and bumped in one
//! step on the request path; connections are semaphore permits held by the
//! connection task for as long as the connection lives.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::config::resilience::Breakers;

#[derive(Debug)]
pub struct Breaker {
    cfg: Breakers,
    requests: AtomicU32,
    pending: AtomicU32,
    retries: AtomicU32,
    pub(super) connections: Arc<Semaphore>,
}

/// A held place under one limit, given back on drop.
#[derive(Debug)]
pub struct Slot<'a>(&'a AtomicU32);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn take(count: &AtomicU32, max: u32) -> Option<Slot<'_>> {
    let prev = count.fetch_add(1, Ordering::Relaxed);
    if prev >= max {
        count.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    Some(Slot(count))
}

impl Breaker {
    pub fn new(cfg: Breakers) -> Breaker {
        let permits = (cfg.max_connections as usize).min(Semaphore::MAX_PERMITS);
        Breaker {
            cfg,
            requests: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            retries: AtomicU32::new(0),
            connections: Arc::new(Semaphore::new(permits)),
        }
    }

    /// `max_requests`: one slot per request for as long as it is upstream.
    pub fn request(&self) -> Option<Slot<'_>> {
        take(&self.requests, self.cfg.max_requests)
    }

    /// `max_pending_requests`: requests waiting for a connection.
    pub fn pending(&self) -> Option<Slot<'_>> {
        take(&self.pending, self.cfg.max_pending_requests)
    }

    /// `max_retries`, or the retry budget when one is configured: a share of
    /// the active and pending requests, never below `min_retry_concurrency`.
    pub fn retry(&self) -> Option<Slot<'_>> {
        take(&self.retries, self.max_retries())
    }

    fn max_retries(&self) -> u32 {
        match &self.cfg.retry_budget {
            None => self.cfg.max_retries,
            Some(b) => {
                let load =
                    self.requests.load(Ordering::Relaxed) + self.pending.load(Ordering::Relaxed);
                let budget = (f64::from(load) * b.percent / 100.0) as u32;
                budget.max(b.min_retry_concurrency)
            }
        }
    }

    /// Envoy's `circuit_breakers.default.*_open` gauges: which limits are
    /// reached right now. Read when stats are rendered, never kept.
    /// `cx_pool_open` stays closed: trellis has no `max_connection_pools`.
    pub fn open(&self) -> [(&'static str, bool); 5] {
        let full = |count: &AtomicU32, max: u32| count.load(Ordering::Relaxed) >= max;
        [
            ("cx_open", self.connections.available_permits() == 0),
            ("cx_pool_open", false),
            ("rq_open", full(&self.requests, self.cfg.max_requests)),
            (
                "rq_pending_open",
                full(&self.pending, self.cfg.max_pending_requests),
            ),
            ("rq_retry_open", full(&self.retries, self.max_retries())),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::resilience::RetryBudget;

    #[test]
    fn limits_hold_and_release() {
        let b = Breaker::new(Breakers {
            max_requests: 2,
            max_retries: 1,
            ..Breakers::default()
        });
        let a = b.request();
        let c = b.request();
        assert!(a.is_some() && c.is_some());
        assert!(b.request().is_none());
        drop(a);
        assert!(b.request().is_some());
        let r = b.retry();
        assert!(r.is_some());
        assert!(b.retry().is_none());
    }

    #[test]
    fn open_gauges_follow_the_limits() {
        let b = Breaker::new(Breakers {
            max_requests: 1,
            max_pending_requests: 1,
            max_retries: 1,
            max_connections: 1,
            ..Breakers::default()
        });
        let open = |b: &Breaker| -> Vec<&str> {
            b.open()
                .iter()
                .filter(|(_, o)| *o)
                .map(|(n, _)| *n)
                .collect()
        };
        assert!(open(&b).is_empty());
        let r = b.request();
        let p = b.pending();
        let t = b.retry();
        let c = b.connections.clone().try_acquire_owned().unwrap();
        assert_eq!(
            open(&b),
            ["cx_open", "rq_open", "rq_pending_open", "rq_retry_open"]
        );
        drop((r, t));
        assert_eq!(open(&b), ["cx_open", "rq_pending_open"]);
        drop((p, c));
        assert!(open(&b).is_empty());
    }

    #[test]
    fn retry_budget_scales_with_load() {
        let b = Breaker::new(Breakers {
            retry_budget: Some(RetryBudget {
                percent: 50.0,
                min_retry_concurrency: 1,
            }),
            ..Breakers::default()
        });
        let held: Vec<_> = (0..10).filter_map(|_| b.request()).collect();
        let retries: Vec<_> = (0..10).filter_map(|_| b.retry()).collect();
        assert_eq!((held.len(), retries.len()), (10, 5));
    }
}
