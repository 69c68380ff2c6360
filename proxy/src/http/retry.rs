//! The questions the upstream loop asks of a route's retry policy.

use std::time::Duration;

use crate::router::{RetryOn, RetryPolicy};

/// gRPC status codes with a `retry_on` condition of their own.
const GRPC_CONDITIONS: [(u32, RetryOn); 5] = [
    (1, RetryOn::GrpcCancelled),
    (4, RetryOn::GrpcDeadlineExceeded),
    (8, RetryOn::GrpcResourceExhausted),
    (13, RetryOn::GrpcInternal),
    (14, RetryOn::GrpcUnavailable),
];

pub trait RetryRules {
    fn retriable_response(&self, status: u16, grpc_status: Option<u32>) -> bool;
    fn retriable_connect_failure(&self) -> bool;
    fn retriable_reset(&self) -> bool;
    fn retriable_timeout(&self) -> bool;
    fn backoff(&self, attempt: u32, random: u64) -> Duration;
}

impl RetryRules for RetryPolicy {
    fn retriable_response(&self, status: u16, grpc_status: Option<u32>) -> bool {
        (self.retries_on(RetryOn::FiveXx) && status >= 500)
            || (self.retries_on(RetryOn::GatewayError) && matches!(status, 502..=504))
            || (self.retries_on(RetryOn::Retriable4xx) && status == 409)
            || (self.retries_on(RetryOn::RetriableStatusCodes)
                && self.retriable_status_codes.contains(&u32::from(status)))
            || grpc_status.is_some_and(|g| {
                GRPC_CONDITIONS
                    .iter()
                    .any(|(code, cond)| *code == g && self.retries_on(*cond))
            })
    }

    /// `5xx` and `gateway-error` include "no response at all", as in Envoy.
    fn retriable_connect_failure(&self) -> bool {
        self.retries_on(RetryOn::ConnectFailure)
            || self.retries_on(RetryOn::FiveXx)
            || self.retries_on(RetryOn::GatewayError)
    }

    fn retriable_reset(&self) -> bool {
        self.retries_on(RetryOn::Reset)
            || self.retries_on(RetryOn::RefusedStream)
            || self.retries_on(RetryOn::FiveXx)
            || self.retries_on(RetryOn::GatewayError)
    }

    fn retriable_timeout(&self) -> bool {
        self.retries_on(RetryOn::FiveXx) || self.retries_on(RetryOn::GatewayError)
    }

    /// Envoy's jittered exponential back-off (its source, 1.40): the wait
    /// before retry `attempt` is random below a ceiling that starts at
    /// `base_interval` and doubles per retry until doubling would pass
    /// `max_interval`, which then holds. (Envoy's prose says
    /// `(2^n - 1) × base`; its code, which this follows, doubles.)
    fn backoff(&self, attempt: u32, random: u64) -> Duration {
        let max = self.max_interval.as_millis().max(1) as u64;
        let mut ceiling = (self.base_interval.as_millis() as u64).clamp(1, max);
        for _ in 1..attempt.min(64) {
            ceiling = if ceiling < max / 2 { ceiling * 2 } else { max };
        }
        Duration::from_millis(random % ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_protos::envoy::config::route::v3::RetryPolicy as Proto;

    fn policy(back_off: Option<(u64, u64)>) -> RetryPolicy {
        let ms = |m: u64| prost_types::Duration {
            seconds: 0,
            nanos: (m * 1_000_000) as i32,
        };
        let p = Proto {
            retry_back_off: back_off.map(|(base, max)| {
                xds_protos::envoy::config::route::v3::retry_policy::RetryBackOff {
                    base_interval: Some(ms(base)),
                    max_interval: Some(ms(max)),
                }
            }),
            ..Default::default()
        };
        RetryPolicy::compile(&p).expect("valid policy")
    }

    /// The exclusive upper bound of the wait before retry `attempt`: the
    /// first draw that wraps to zero.
    fn ceiling(p: &RetryPolicy, attempt: u32) -> u64 {
        let c = (1..=100_000u64)
            .find(|r| p.backoff(attempt, *r).is_zero())
            .expect("a ceiling");
        assert_eq!(p.backoff(attempt, c - 1).as_millis() as u64, c - 1);
        c
    }

    #[test]
    fn backoff_doubles_from_25ms_and_stops_at_ten_times_base() {
        let p = policy(None);
        let ceilings: Vec<u64> = (1..=6).map(|n| ceiling(&p, n)).collect();
        assert_eq!(ceilings, [25, 50, 100, 200, 250, 250]);
        assert_eq!(ceiling(&p, 1000), 250);
    }

    #[test]
    fn backoff_caps_at_max_interval_like_envoy() {
        // 25, then 50 would pass 60 / 2: the cap holds from the third retry.
        let p = policy(Some((25, 60)));
        let ceilings: Vec<u64> = (1..=4).map(|n| ceiling(&p, n)).collect();
        assert_eq!(ceilings, [25, 50, 60, 60]);
        let p = policy(Some((100, 100)));
        assert_eq!((ceiling(&p, 1), ceiling(&p, 5)), (100, 100));
    }

    #[test]
    fn backoff_jitter_spans_zero_to_the_ceiling() {
        let p = policy(None);
        let waits: Vec<u64> = (0..5_000)
            .map(|_| p.backoff(3, crate::rng::random()).as_millis() as u64)
            .collect();
        assert!(waits.iter().all(|w| *w < 100), "retry 3 waits below 100 ms");
        // Every 10 ms band of [0, 100) is drawn: the wait is spread, not fixed.
        for band in 0..10 {
            assert!(
                waits.iter().any(|w| w / 10 == band),
                "no wait in [{}, {}) ms",
                band * 10,
                band * 10 + 10
            );
        }
    }
}
