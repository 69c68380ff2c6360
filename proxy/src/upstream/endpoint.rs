//! One upstream host: its address, weight, live request count and pool.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use super::pool::Pool;

#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    /// Requests in flight, for LEAST_REQUEST and `/clusters`.
    active_rq: AtomicU32,
    pub(super) pool: Pool,
}

impl Endpoint {
    pub fn new(addr: SocketAddr, weight: u32) -> Endpoint {
        Endpoint {
            addr,
            weight,
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
