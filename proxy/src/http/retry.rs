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

    /// Envoy's fully jittered exponential back-off: a random wait below
    /// `base × 2^(attempt-1)`, capped at `max_interval`.
    fn backoff(&self, attempt: u32, random: u64) -> Duration {
        let shift = attempt.saturating_sub(1).min(16);
        let ceiling = self
            .base_interval
            .saturating_mul(1u32 << shift)
            .min(self.max_interval);
        let ms = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(random % ms)
    }
}
