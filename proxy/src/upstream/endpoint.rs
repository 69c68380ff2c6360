//! One upstream host: its address, weight, live request count, health and pool.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};

use super::pool::Pool;

/// An endpoint as discovery produced it (config, DNS or EDS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub addr: SocketAddr,
    pub weight: u32,
    /// The DNS name it was resolved from, for `auto_host_rewrite`.
    pub hostname: Option<std::sync::Arc<str>>,
    /// Where active health checks go, when not to `addr`'s port.
    pub health_check_port: Option<u16>,
    /// The Host of its health checks, when not the cluster's.
    pub health_check_host: Option<std::sync::Arc<str>>,
}

/// Health flags, as `/clusters` prints them.
pub const FAILED_ACTIVE_HC: u8 = 1;
pub const FAILED_OUTLIER_CHECK: u8 = 2;

/// Caps the failure penalty so a recovered host wins its share back after a
/// few dozen successes.
const MAX_PENALTY: u32 = 64;
/// What one failure adds to the penalty; one success takes one away.
const PENALTY_PER_FAILURE: u32 = 8;

#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    pub hostname: Option<std::sync::Arc<str>>,
    /// The address active health checks connect to.
    pub health_check_addr: SocketAddr,
    pub health_check_host: Option<std::sync::Arc<str>>,
    /// Requests in flight, for LEAST_REQUEST and `/clusters`.
    active_rq: AtomicU32,
    /// `FAILED_*` bits. Written only by the health checker and the outlier
    /// detector (off the request path); read when the LB set is rebuilt.
    health: AtomicU8,
    /// Consecutive 5xx and gateway failures, for outlier detection.
    pub(super) consecutive_5xx: AtomicU32,
    pub(super) consecutive_gateway: AtomicU32,
    /// Set when a consecutive-failure threshold was crossed and the outlier
    /// detector has not yet decided; keeps one burst from queueing many.
    pub(super) ejection_pending: AtomicBool,
    /// Recent failures, decaying with successes. A host that fails fast also
    /// frees its slots fast, so load-based picking alone would send it more
    /// traffic; the LB counts this penalty as extra load instead.
    penalty: AtomicU32,
    pub(super) pool: Pool,
}

impl Endpoint {
    /// `health` is the initial flags: a host of a health-checked cluster
    /// starts as failing its active check until the first check passes.
    pub fn new(r: &Resolved, health: u8) -> Endpoint {
        let addr = r.addr;
        Endpoint {
            addr,
            weight: r.weight,
            hostname: r.hostname.clone(),
            health_check_addr: SocketAddr::new(
                addr.ip(),
                r.health_check_port.unwrap_or(addr.port()),
            ),
            health_check_host: r.health_check_host.clone(),
            active_rq: AtomicU32::new(0),
            health: AtomicU8::new(health),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            ejection_pending: AtomicBool::new(false),
            penalty: AtomicU32::new(0),
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

    pub fn health_flags(&self) -> u8 {
        self.health.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.health_flags() == 0
    }

    /// Sets or clears one flag; true when it changed.
    pub(super) fn set_flag(&self, flag: u8, on: bool) -> bool {
        let old = if on {
            self.health.fetch_or(flag, Ordering::Relaxed)
        } else {
            self.health.fetch_and(!flag, Ordering::Relaxed)
        };
        (old & flag != 0) != on
    }

    /// `/clusters`' `health_flags`: `healthy`, or each failure as `/name`.
    pub fn health_flags_text(&self) -> String {
        let f = self.health_flags();
        if f == 0 {
            return "healthy".to_string();
        }
        let mut s = String::new();
        if f & FAILED_ACTIVE_HC != 0 {
            s.push_str("/failed_active_hc");
        }
        if f & FAILED_OUTLIER_CHECK != 0 {
            s.push_str("/failed_outlier_check");
        }
        s
    }

    pub fn penalty(&self) -> u32 {
        self.penalty.load(Ordering::Relaxed)
    }

    pub(super) fn note_failure(&self) {
        let _ = self
            .penalty
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                Some((p + PENALTY_PER_FAILURE).min(MAX_PENALTY))
            });
    }

    pub(super) fn note_success(&self) {
        if self.penalty.load(Ordering::Relaxed) > 0 {
            let _ = self
                .penalty
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| p.checked_sub(1));
        }
    }
}

#[derive(Debug)]
pub struct ActiveGuard(std::sync::Arc<Endpoint>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active_rq.fetch_sub(1, Ordering::Relaxed);
    }
}
