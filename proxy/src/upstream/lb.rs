//! Load balancing over an immutable endpoint set. Lock-free: a pick reads the
//! set and at most bumps one atomic counter. Health changes build a new set
//! off the request path (see `Cluster::rebuild`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::Endpoint;
use crate::config::cluster::LbPolicy;
use crate::config::resilience::LbOptions;

/// The largest smooth weighted round-robin schedule kept; weights are scaled
/// down to fit so a huge weight cannot cost unbounded memory.
const MAX_SCHEDULE: u64 = 4096;

#[derive(Debug, Default)]
pub struct EndpointSet {
    /// Every host, whatever its health (for `/clusters` and health checks).
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The hosts picks are made from: the healthy ones, or all of them when
    /// too few are healthy (Envoy's panic mode).
    eligible: Vec<Arc<Endpoint>>,
    pub healthy: usize,
    pub panic: bool,
    /// Indices into `eligible`, interleaved by weight (nginx's smooth WRR).
    schedule: Vec<u32>,
    /// RING_HASH: (point, index into `eligible`) sorted by point.
    ring: Vec<(u64, u32)>,
    /// MAGLEV: lookup table of indices into `eligible`.
    maglev: Vec<u32>,
}

impl EndpointSet {
    pub fn new(endpoints: Vec<Arc<Endpoint>>, policy: LbPolicy, opts: &LbOptions) -> EndpointSet {
        let healthy: Vec<Arc<Endpoint>> = endpoints
            .iter()
            .filter(|e| e.is_healthy())
            .cloned()
            .collect();
        let total = endpoints.len();
        let panic = total > 0
            && opts.healthy_panic_threshold > 0.0
            && (healthy.len() as f64 * 100.0) < opts.healthy_panic_threshold * total as f64;
        let n_healthy = healthy.len();
        let eligible = if panic { endpoints.clone() } else { healthy };
        let schedule = smooth_schedule(&eligible);
        let ring = match policy {
            LbPolicy::RingHash => build_ring(&eligible, &endpoints, opts),
            _ => Vec::new(),
        };
        let maglev = match policy {
            LbPolicy::Maglev => build_maglev(&eligible, opts.maglev_table_size),
            _ => Vec::new(),
        };
        EndpointSet {
            endpoints,
            eligible,
            healthy: n_healthy,
            panic,
            schedule,
            ring,
            maglev,
        }
    }

    /// `hash` is the request's hash-policy value for RING_HASH and MAGLEV;
    /// without one those policies use `random`, as Envoy does.
    pub fn pick(
        &self,
        policy: LbPolicy,
        opts: &LbOptions,
        counter: &AtomicUsize,
        random: u64,
        hash: Option<u64>,
    ) -> Option<&Arc<Endpoint>> {
        let n = self.eligible.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            return self.eligible.first();
        }
        let idx = match policy {
            LbPolicy::RoundRobin => {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                self.schedule[i % self.schedule.len()] as usize
            }
            // Envoy's RANDOM draws uniformly and ignores endpoint weights.
            LbPolicy::Random => (random % n as u64) as usize,
            LbPolicy::LeastRequest => self.least_request(opts, random),
            LbPolicy::RingHash => {
                let h = hash.unwrap_or(random);
                let i = self.ring.partition_point(|(p, _)| *p < h);
                let (_, e) = self.ring.get(i).or(self.ring.first())?;
                *e as usize
            }
            LbPolicy::Maglev => {
                let h = hash.unwrap_or(random);
                *self
                    .maglev
                    .get((h % self.maglev.len().max(1) as u64) as usize)? as usize
            }
        };
        self.eligible.get(idx)
    }

    /// An eligible host other than `avoid`, from a random start: the
    /// fallback of a retry whose re-draws kept landing on the failed host.
    pub fn other_than(&self, avoid: &Arc<Endpoint>, random: u64) -> Option<&Arc<Endpoint>> {
        let n = self.eligible.len();
        let start = (random % n.max(1) as u64) as usize;
        (0..n)
            .map(|i| &self.eligible[(start + i) % n])
            .find(|e| !Arc::ptr_eq(e, avoid))
    }

    /// Envoy's least-request: `choice_count` random candidates, the least
    /// loaded wins. Load is `(active + 1 + penalty)^bias / weight`, which is
    /// plain least-active for equal weights and Envoy's weighted form
    /// otherwise; the failure penalty keeps a fast-failing host (few requests
    /// in flight because it answers at once) from attracting more traffic.
    fn least_request(&self, opts: &LbOptions, random: u64) -> usize {
        let n = self.eligible.len() as u64;
        let mut state = random;
        let mut best = (f64::INFINITY, 0usize);
        for _ in 0..opts.choice_count.max(2) {
            state = splitmix(state);
            let i = (state % n) as usize;
            let e = &self.eligible[i];
            let load = f64::from(e.active_requests() + 1 + e.penalty());
            let score = load.powf(opts.active_request_bias) / f64::from(e.weight.max(1));
            if score < best.0 {
                best = (score, i);
            }
        }
        best.1
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

/// Each unit of a host's weight gets `minimum_ring_size` points, and a
/// point depends only on the host's address and ordinal: a host's points do
/// not depend on the other hosts, so a host leaving (failed check, ejection,
/// or removal through EDS) moves only the keys on its own points, and the
/// ring is never below the minimum. Only a ring that would pass
/// `maximum_ring_size` (over all hosts, healthy or not) is scaled down, and
/// then a change of the total can move other keys too.
fn build_ring(
    endpoints: &[Arc<Endpoint>],
    all: &[Arc<Endpoint>],
    opts: &LbOptions,
) -> Vec<(u64, u32)> {
    let total: u64 = all.iter().map(|e| u64::from(e.weight.max(1))).sum();
    if total == 0 {
        return Vec::new();
    }
    let max = opts.ring_max.max(1);
    let per_unit = opts.ring_min.clamp(1, max);
    // Over the maximum, each host keeps its weight's share of it.
    let scaled = per_unit.saturating_mul(total) > max;
    let points_of = |w: u64| {
        if scaled {
            (u128::from(w) * u128::from(max) / u128::from(total)).max(1) as u64
        } else {
            per_unit * w
        }
    };
    let mut ring = Vec::new();
    let mut point = String::new();
    for (i, e) in endpoints.iter().enumerate() {
        let points = points_of(u64::from(e.weight.max(1)));
        let key = e.addr.to_string();
        for j in 0..points {
            use std::fmt::Write;
            point.clear();
            let _ = write!(point, "{key}_{j}");
            ring.push((hash_bytes(point.as_bytes()), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// Google's Maglev table, weighted as Envoy does: in each round a host places
/// entries in proportion to its weight relative to the heaviest host.
fn build_maglev(endpoints: &[Arc<Endpoint>], size: u64) -> Vec<u32> {
    if endpoints.is_empty() || size < 2 {
        return Vec::new();
    }
    let m = size as usize;
    let max_w = endpoints.iter().map(|e| e.weight.max(1)).max().unwrap_or(1);
    let perms: Vec<(u64, u64)> = endpoints
        .iter()
        .map(|e| {
            let key = e.addr.to_string();
            let offset = hash_bytes(format!("{key}#offset").as_bytes()) % size;
            let skip = hash_bytes(format!("{key}#skip").as_bytes()) % (size - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; endpoints.len()];
    let mut credit = vec![0u32; endpoints.len()];
    let mut table = vec![u32::MAX; m];
    let mut filled = 0;
    while filled < m {
        for (i, e) in endpoints.iter().enumerate() {
            credit[i] += e.weight.max(1);
            while credit[i] >= max_w && filled < m {
                credit[i] -= max_w;
                let (offset, skip) = perms[i];
                loop {
                    let c = ((offset + next[i] * skip) % size) as usize;
                    next[i] += 1;
                    if table[c] == u32::MAX {
                        table[c] = i as u32;
                        filled += 1;
                        break;
                    }
                }
            }
        }
    }
    table
}

/// FNV-1a with a final avalanche: stable across runs and releases, so a
/// key keeps its host across restarts.
pub fn hash_bytes(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    fmix(h)
}

fn fmix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn splitmix(x: u64) -> u64 {
    fmix(x.wrapping_add(0x9e37_79b9_7f4a_7c15))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::endpoint::{Resolved, FAILED_ACTIVE_HC};

    fn hosts(weights: &[u32]) -> Vec<Arc<Endpoint>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Arc::new(Endpoint::new(
                    &Resolved {
                        addr: ([127, 0, 0, 1], 1000 + i as u16).into(),
                        weight: *w,
                        hostname: None,
                        health_check_port: None,
                        health_check_host: None,
                    },
                    0,
                ))
            })
            .collect()
    }

    fn set(weights: &[u32], policy: LbPolicy) -> EndpointSet {
        EndpointSet::new(hosts(weights), policy, &LbOptions::default())
    }

    fn port(e: Option<&Arc<Endpoint>>) -> u16 {
        e.map_or(99, |e| e.addr.port() - 1000)
    }

    #[test]
    fn round_robin_follows_weights_smoothly() {
        let s = set(&[5, 1, 1], LbPolicy::RoundRobin);
        let c = AtomicUsize::new(0);
        let o = LbOptions::default();
        let picks: Vec<u16> = (0..7)
            .map(|_| port(s.pick(LbPolicy::RoundRobin, &o, &c, 0, None)))
            .collect();
        assert_eq!(picks.iter().filter(|p| **p == 0).count(), 5);
        // Smooth: the heavy endpoint never takes all of the first three picks.
        assert!(picks[..3].iter().any(|p| *p != 0), "{picks:?}");
    }

    #[test]
    fn random_ignores_weights_as_envoy_does() {
        let s = set(&[9, 1], LbPolicy::Random);
        let (o, c) = (LbOptions::default(), AtomicUsize::new(0));
        let light = (0..10_000u64)
            .filter(|r| port(s.pick(LbPolicy::Random, &o, &c, splitmix(*r), None)) == 1)
            .count();
        assert!((4_500..5_500).contains(&light), "{light}");
    }

    #[test]
    fn least_request_prefers_idle_and_unpenalised_endpoints() {
        let s = set(&[1, 1], LbPolicy::LeastRequest);
        let o = LbOptions::default();
        let busy = s.endpoints[0].track();
        let c = AtomicUsize::new(0);
        let picks = (0..200u64)
            .filter(|r| port(s.pick(LbPolicy::LeastRequest, &o, &c, *r, None)) == 1)
            .count();
        // Both candidates equal (same host drawn twice) is the only way to lose.
        assert!(picks > 120, "{picks}");
        drop(busy);
        s.endpoints[1].note_failure();
        let picks = (0..200u64)
            .filter(|r| port(s.pick(LbPolicy::LeastRequest, &o, &c, *r, None)) == 1)
            .count();
        assert!(picks < 80, "a failing host draws less: {picks}");
    }

    #[test]
    fn unhealthy_hosts_are_skipped_until_panic() {
        let h = hosts(&[1, 1, 1]);
        h[0].set_flag(FAILED_ACTIVE_HC, true);
        let s = EndpointSet::new(h.clone(), LbPolicy::RoundRobin, &LbOptions::default());
        assert!(!s.panic);
        let c = AtomicUsize::new(0);
        let o = LbOptions::default();
        for _ in 0..10 {
            assert_ne!(port(s.pick(LbPolicy::RoundRobin, &o, &c, 0, None)), 0);
        }
        h[1].set_flag(FAILED_ACTIVE_HC, true);
        let s = EndpointSet::new(h.clone(), LbPolicy::RoundRobin, &LbOptions::default());
        assert!(s.panic, "1 of 3 healthy is below 50%");
        let strict = LbOptions {
            healthy_panic_threshold: 0.0,
            ..LbOptions::default()
        };
        h[2].set_flag(FAILED_ACTIVE_HC, true);
        let s = EndpointSet::new(h, LbPolicy::RoundRobin, &strict);
        assert!(s.pick(LbPolicy::RoundRobin, &strict, &c, 0, None).is_none());
    }

    #[test]
    fn ring_hash_moves_only_the_removed_hosts_keys() {
        let h = hosts(&[1, 1, 1, 1]);
        let o = LbOptions::default();
        let c = AtomicUsize::new(0);
        let all = EndpointSet::new(h.clone(), LbPolicy::RingHash, &o);
        h[3].set_flag(FAILED_ACTIVE_HC, true);
        let three = EndpointSet::new(h, LbPolicy::RingHash, &o);
        let mut moved = 0;
        let mut counts = [0u32; 4];
        for k in 0..4000u64 {
            let key = hash_bytes(&k.to_le_bytes());
            let a = port(all.pick(LbPolicy::RingHash, &o, &c, 7, Some(key)));
            let b = port(three.pick(LbPolicy::RingHash, &o, &c, 9, Some(key)));
            counts[a as usize] += 1;
            if a != 3 {
                assert_eq!(a, b, "a key on a remaining host stays put");
            } else {
                moved += 1;
            }
        }
        assert_eq!(counts.iter().sum::<u32>(), 4000);
        assert!(counts.iter().all(|n| (700..1300).contains(n)), "{counts:?}");
        assert_eq!(moved, counts[3]);
    }

    #[test]
    fn ring_hash_keeps_remaining_keys_when_a_host_is_removed() {
        // Removal through EDS builds a set without the host at all.
        let h = hosts(&[1, 1, 1, 1]);
        let o = LbOptions::default();
        let c = AtomicUsize::new(0);
        let four = EndpointSet::new(h.clone(), LbPolicy::RingHash, &o);
        let three = EndpointSet::new(h[..3].to_vec(), LbPolicy::RingHash, &o);
        assert!(three.ring.len() as u64 >= o.ring_min);
        let mut moved = 0;
        for k in 0..4000u64 {
            let key = hash_bytes(&k.to_le_bytes());
            let a = port(four.pick(LbPolicy::RingHash, &o, &c, 7, Some(key)));
            let b = port(three.pick(LbPolicy::RingHash, &o, &c, 9, Some(key)));
            if a == 3 {
                moved += 1;
            } else {
                assert_eq!(a, b, "key {k} moved between remaining hosts");
            }
        }
        assert!((700..1300).contains(&moved), "{moved}");
        // Weights still set the shares.
        let heavy = EndpointSet::new(hosts(&[3, 1]), LbPolicy::RingHash, &o);
        let on_heavy = (0..4000u64)
            .filter(|k| {
                let key = hash_bytes(&k.to_le_bytes());
                port(heavy.pick(LbPolicy::RingHash, &o, &c, 0, Some(key))) == 0
            })
            .count();
        assert!((2_700..3_300).contains(&on_heavy), "{on_heavy}");
    }

    #[test]
    fn ring_hash_stays_under_its_maximum_size() {
        let o = LbOptions {
            ring_min: 1024,
            ring_max: 2048,
            ..LbOptions::default()
        };
        let s = EndpointSet::new(hosts(&[1, 1, 1, 1]), LbPolicy::RingHash, &o);
        assert_eq!(s.ring.len(), 2048);
        // A huge weight is scaled into the maximum too.
        let s = EndpointSet::new(hosts(&[u32::MAX, 1]), LbPolicy::RingHash, &o);
        assert!(s.ring.len() <= 2049, "{}", s.ring.len());
    }

    #[test]
    fn maglev_spreads_by_weight_and_is_stable() {
        let h = hosts(&[1, 2, 1]);
        let o = LbOptions {
            maglev_table_size: 65537,
            ..LbOptions::default()
        };
        let s = EndpointSet::new(h.clone(), LbPolicy::Maglev, &o);
        let mut counts = [0usize; 3];
        for i in &s.maglev {
            counts[*i as usize] += 1;
        }
        assert!(counts[1] > counts[0] * 3 / 2, "{counts:?}");
        let again = EndpointSet::new(h, LbPolicy::Maglev, &o);
        assert_eq!(s.maglev, again.maglev);
    }

    #[test]
    fn empty_set_picks_nothing() {
        let s = set(&[], LbPolicy::RoundRobin);
        let o = LbOptions::default();
        assert!(s
            .pick(LbPolicy::RoundRobin, &o, &AtomicUsize::new(0), 1, None)
            .is_none());
    }
}
