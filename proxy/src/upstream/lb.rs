//! Load balancing over an immutable endpoint set. Lock-free: a pick reads the
//! set and bumps one atomic counter.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::Endpoint;
use crate::config::cluster::LbPolicy;

/// The largest smooth weighted round-robin schedule kept; weights are scaled
/// down to fit so a huge weight cannot cost unbounded memory.
const MAX_SCHEDULE: u64 = 4096;

#[derive(Debug, Default)]
pub struct EndpointSet {
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Indices into `endpoints`, interleaved by weight (nginx's smooth WRR).
    schedule: Vec<u32>,
}

impl EndpointSet {
    pub fn new(endpoints: Vec<Arc<Endpoint>>) -> EndpointSet {
        let schedule = smooth_schedule(&endpoints);
        EndpointSet {
            endpoints,
            schedule,
        }
    }

    pub fn pick(
        &self,
        policy: LbPolicy,
        counter: &AtomicUsize,
        random: u64,
    ) -> Option<&Arc<Endpoint>> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            return self.endpoints.first();
        }
        let idx = match policy {
            LbPolicy::RoundRobin => {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                self.schedule[i % self.schedule.len()] as usize
            }
            LbPolicy::Random => {
                self.schedule[(random % self.schedule.len() as u64) as usize] as usize
            }
            LbPolicy::LeastRequest => {
                // Power of two choices, weighing active requests by endpoint weight.
                let a = (random % n as u64) as usize;
                let mut b = ((random >> 32) % (n as u64 - 1)) as usize;
                if b >= a {
                    b += 1;
                }
                let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
                let load_a = u64::from(ea.active_requests()) * u64::from(eb.weight);
                let load_b = u64::from(eb.active_requests()) * u64::from(ea.weight);
                if load_b < load_a {
                    b
                } else {
                    a
                }
            }
        };
        self.endpoints.get(idx)
    }
}

fn smooth_schedule(endpoints: &[Arc<Endpoint>]) -> Vec<u32> {
    let total: u64 = endpoints.iter().map(|e| u64::from(e.weight)).sum();
    if total == 0 {
        return Vec::new();
    }
    let scale = total.div_ceil(MAX_SCHEDULE).max(1);
    let weights: Vec<i64> = endpoints
        .iter()
        .map(|e| (u64::from(e.weight) / scale).max(1) as i64)
        .collect();
    let sum: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(sum as usize);
    for _ in 0..sum {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= sum;
        out.push(best as u32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::endpoint::Resolved;

    fn set(weights: &[u32]) -> EndpointSet {
        EndpointSet::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    Arc::new(Endpoint::new(&Resolved {
                        addr: ([127, 0, 0, 1], 1000 + i as u16).into(),
                        weight: *w,
                        hostname: None,
                    }))
                })
                .collect(),
        )
    }

    #[test]
    fn round_robin_follows_weights_smoothly() {
        let s = set(&[5, 1, 1]);
        let c = AtomicUsize::new(0);
        let picks: Vec<u16> = (0..7)
            .map(|_| {
                s.pick(LbPolicy::RoundRobin, &c, 0)
                    .map(|e| e.addr.port() - 1000)
                    .unwrap_or(99)
            })
            .collect();
        assert_eq!(picks.iter().filter(|p| **p == 0).count(), 5);
        // Smooth: the heavy endpoint never takes all of the first three picks.
        assert!(picks[..3].iter().any(|p| *p != 0), "{picks:?}");
    }

    #[test]
    fn least_request_prefers_idle_endpoint() {
        let s = set(&[1, 1]);
        let busy = s.endpoints[0].track();
        let c = AtomicUsize::new(0);
        for r in 0..64u64 {
            let random = r | (r << 32);
            let e = s
                .pick(LbPolicy::LeastRequest, &c, random)
                .map(|e| e.addr.port());
            assert_eq!(e, Some(1001));
        }
        drop(busy);
    }

    #[test]
    fn empty_set_picks_nothing() {
        let s = set(&[]);
        assert!(s
            .pick(LbPolicy::RoundRobin, &AtomicUsize::new(0), 1)
            .is_none());
    }
}
