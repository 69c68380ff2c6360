//! `RetryPolicy`, compiled once so the upstream code only asks questions.

use std::time::Duration;

use xds_protos::envoy::config::route::v3::RetryPolicy as RetryPolicyProto;

use super::convert::{opt_duration, reject_if};
use crate::config::ConfigError;

/// A `retry_on` condition trellis implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    FiveXx,
    GatewayError,
    Reset,
    ConnectFailure,
    Retriable4xx,
    RefusedStream,
    RetriableStatusCodes,
    GrpcCancelled,
    GrpcDeadlineExceeded,
    GrpcInternal,
    GrpcResourceExhausted,
    GrpcUnavailable,
}

impl RetryOn {
    fn parse(token: &str) -> Option<RetryOn> {
        Some(match token {
            "5xx" => RetryOn::FiveXx,
            "gateway-error" => RetryOn::GatewayError,
            "reset" => RetryOn::Reset,
            "connect-failure" => RetryOn::ConnectFailure,
            "retriable-4xx" => RetryOn::Retriable4xx,
            "refused-stream" => RetryOn::RefusedStream,
            "retriable-status-codes" => RetryOn::RetriableStatusCodes,
            "cancelled" => RetryOn::GrpcCancelled,
            "deadline-exceeded" => RetryOn::GrpcDeadlineExceeded,
            "internal" => RetryOn::GrpcInternal,
            "resource-exhausted" => RetryOn::GrpcResourceExhausted,
            "unavailable" => RetryOn::GrpcUnavailable,
            _ => return None,
        })
    }

    fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// Conditions Envoy knows but trellis does not implement; refused so that a
/// policy never retries less than its author expects.
const UNSUPPORTED_RETRY_ON: &[&str] = &[
    "envoy-ratelimited",
    "retriable-headers",
    "reset-before-request",
    "http3-post-connect-failure",
];

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    retry_on: u16,
    /// Envoy's default is 1 when unset.
    pub num_retries: u32,
    /// `None` when unset or zero: each try gets the route's remaining timeout.
    pub per_try_timeout: Option<Duration>,
    /// Defaults 25 ms and 10× base, as in Envoy.
    pub base_interval: Duration,
    pub max_interval: Duration,
    pub retriable_status_codes: Vec<u32>,
    /// How many times a retry re-draws a host that just failed before it
    /// takes any other eligible host (`host_selection_retry_max_attempts`).
    pub host_selection_attempts: u32,
}

/// The predicate Istio configures. trellis steps off the failed host on
/// every retry anyway, so it is accepted; other predicates are refused.
const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";
const PREVIOUS_HOSTS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";

/// Re-draws of a failed host before the fallback when the policy sets none.
const DEFAULT_HOST_SELECTION_ATTEMPTS: u32 = 3;

fn check_host_predicates(p: &RetryPolicyProto) -> Result<(), ConfigError> {
    use xds_protos::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType;
    for (i, pred) in p.retry_host_predicate.iter().enumerate() {
        let type_url = match &pred.config_type {
            Some(ConfigType::TypedConfig(any)) => any.type_url.as_str(),
            None => "",
        };
        let known =
            type_url == PREVIOUS_HOSTS_TYPE || (type_url.is_empty() && pred.name == PREVIOUS_HOSTS);
        if !known {
            let what = if type_url.is_empty() {
                &pred.name
            } else {
                type_url
            };
            return Err(ConfigError::new(
                format!("retry_host_predicate[{i}]"),
                format!("{what} is not supported by trellis (only {PREVIOUS_HOSTS})"),
            ));
        }
    }
    if p.host_selection_retry_max_attempts < 0 {
        return Err(ConfigError::new(
            "host_selection_retry_max_attempts",
            "must not be negative",
        ));
    }
    Ok(())
}

impl RetryPolicy {
    pub fn retries_on(&self, condition: RetryOn) -> bool {
        self.retry_on & condition.bit() != 0
    }

    /// Unknown `retry_on` tokens are ignored, as Envoy 1.40 does (verified:
    /// `5xx, bogus,unavailable` loads); known but unimplemented ones fail.
    pub(crate) fn compile(p: &RetryPolicyProto) -> Result<RetryPolicy, ConfigError> {
        reject_if(p.per_try_idle_timeout.is_some(), "per_try_idle_timeout")?;
        reject_if(p.retry_priority.is_some(), "retry_priority")?;
        check_host_predicates(p)?;
        reject_if(
            !p.retry_options_predicates.is_empty(),
            "retry_options_predicates",
        )?;
        reject_if(
            p.rate_limited_retry_back_off.is_some(),
            "rate_limited_retry_back_off",
        )?;
        reject_if(!p.retriable_headers.is_empty(), "retriable_headers")?;
        reject_if(
            !p.retriable_request_headers.is_empty(),
            "retriable_request_headers",
        )?;
        reject_if(p.refresh_cluster_on_retry, "refresh_cluster_on_retry")?;
        let mut retry_on = 0;
        for token in p
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            if UNSUPPORTED_RETRY_ON.contains(&token) {
                return Err(ConfigError::new(
                    "retry_on",
                    format!("condition {token} is not supported by trellis"),
                ));
            }
            retry_on |= RetryOn::parse(token).map_or(0, RetryOn::bit);
        }
        let per_try_timeout =
            opt_duration("per_try_timeout", p.per_try_timeout.as_ref())?.filter(|d| !d.is_zero());
        let (base_interval, max_interval) = match &p.retry_back_off {
            None => (Duration::from_millis(25), Duration::from_millis(250)),
            Some(b) => {
                let base = opt_duration("retry_back_off.base_interval", b.base_interval.as_ref())?
                    .filter(|d| *d >= Duration::from_millis(1))
                    .ok_or_else(|| {
                        ConfigError::new(
                            "retry_back_off.base_interval",
                            "is required and must be at least 1ms",
                        )
                    })?;
                let max =
                    match opt_duration("retry_back_off.max_interval", b.max_interval.as_ref())? {
                        None => base.saturating_mul(10),
                        Some(max) if max < base || max < Duration::from_millis(1) => {
                            return Err(ConfigError::new(
                                "retry_back_off.max_interval",
                                "must be greater than or equal to the base_interval",
                            ))
                        }
                        Some(max) => max,
                    };
                (base, max)
            }
        };
        Ok(RetryPolicy {
            retry_on,
            num_retries: p.num_retries.unwrap_or(1),
            per_try_timeout,
            base_interval,
            max_interval,
            retriable_status_codes: p.retriable_status_codes.clone(),
            host_selection_attempts: match p.host_selection_retry_max_attempts {
                0 => DEFAULT_HOST_SELECTION_ATTEMPTS,
                n => u32::try_from(n).unwrap_or(u32::MAX).min(64),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_protos::envoy::config::route::v3::retry_policy::RetryBackOff;

    #[test]
    fn only_the_previous_hosts_predicate_is_accepted() {
        use xds_protos::envoy::config::route::v3::retry_policy::{
            retry_host_predicate::ConfigType, RetryHostPredicate,
        };
        let with = |type_url: &str, attempts: i64| RetryPolicyProto {
            retry_host_predicate: vec![RetryHostPredicate {
                name: "p".into(),
                config_type: Some(ConfigType::TypedConfig(prost_types::Any {
                    type_url: type_url.into(),
                    value: vec![],
                })),
            }],
            host_selection_retry_max_attempts: attempts,
            ..Default::default()
        };
        let p = RetryPolicy::compile(&with(PREVIOUS_HOSTS_TYPE, 5)).expect("accepted");
        assert_eq!(p.host_selection_attempts, 5);
        let p = RetryPolicy::compile(&with(PREVIOUS_HOSTS_TYPE, 0)).expect("accepted");
        assert_eq!(p.host_selection_attempts, DEFAULT_HOST_SELECTION_ATTEMPTS);
        let canary = "type.googleapis.com/envoy.extensions.retry.host.omit_canary_hosts.v3.OmitCanaryHostsPredicate";
        let e = RetryPolicy::compile(&with(canary, 0)).expect_err("refused");
        assert!(e.to_string().contains("OmitCanaryHostsPredicate"), "{e}");
    }

    #[test]
    fn defaults_and_conditions() {
        let p = RetryPolicy::compile(&RetryPolicyProto {
            retry_on: "5xx, reset,bogus,unavailable".into(),
            retriable_status_codes: vec![409],
            ..Default::default()
        })
        .unwrap();
        assert!(p.retries_on(RetryOn::FiveXx));
        assert!(p.retries_on(RetryOn::Reset));
        assert!(p.retries_on(RetryOn::GrpcUnavailable));
        assert!(!p.retries_on(RetryOn::ConnectFailure));
        assert_eq!(p.num_retries, 1);
        assert_eq!(p.base_interval, Duration::from_millis(25));
        assert_eq!(p.max_interval, Duration::from_millis(250));
        assert_eq!(p.per_try_timeout, None);
        assert_eq!(p.retriable_status_codes, [409]);
    }

    #[test]
    fn back_off_defaults_max_to_ten_times_base() {
        let p = RetryPolicy::compile(&RetryPolicyProto {
            num_retries: Some(0),
            retry_back_off: Some(RetryBackOff {
                base_interval: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 100_000_000,
                }),
                max_interval: None,
            }),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.num_retries, 0);
        assert_eq!(p.max_interval, Duration::from_secs(1));
    }

    #[test]
    fn errors() {
        let e = RetryPolicy::compile(&RetryPolicyProto {
            retry_back_off: Some(RetryBackOff {
                base_interval: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                max_interval: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 500_000_000,
                }),
            }),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.path, "retry_back_off.max_interval");
        let e = RetryPolicy::compile(&RetryPolicyProto {
            retry_on: "5xx,retriable-headers".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.path, "retry_on");
        let e = RetryPolicy::compile(&RetryPolicyProto {
            refresh_cluster_on_retry: true,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "refresh_cluster_on_retry: is not supported by trellis"
        );
    }
}
