//! One upstream host: its address, weight, live request count and pool.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use super::pool::Pool;

/// An endpoint as discovery produced it (config, DNS or EDS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub addr: SocketAddr,
    pub weight: u32,
    /// The DNS name it was resolved from, for `auto_host_rewrite`.
    pub hostname: Option<std::sync::Arc<str>>,
}

#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    pub hostname: Option<std::sync::Arc<str>>,
    /// Requests in flight, for LEAST_REQUEST and `/clusters`.
    active_rq: AtomicU32,
    pub(super) pool: Pool,
}

impl Endpoint {
    pub fn new(r: &Resolved) -> Endpoint {
        let addr = r.addr;
        Endpoint {
            addr,
            weight: r.weight,
            hostname: r.hostname.clone(),
            active_rq: AtomicU32::new(0),
            pool: Pool::new(addr),
        }
    }

    pub fn active_requests(&self) -> u32 {
        self.active_rq.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    pub fn track(self: &std::sync::Arc<Self>) -> ActiveGuard {
        self.active_rq.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }
}

#[derive(Debug)]
pub struct ActiveGuard(std::sync::Arc<Endpoint>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active_rq.fetch_sub(1, Ordering::Relaxed);
    }
}
