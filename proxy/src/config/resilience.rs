//! A cluster's resilience settings — circuit breakers, outlier detection,
//! active health checks, panic threshold and LB options — compiled with
//! Envoy's defaults so the run-time code never looks at a proto.

use std::time::Duration;

use xds_protos::envoy::config::cluster::v3::{circuit_breakers, cluster, Cluster};
use xds_protos::envoy::config::core::v3::{health_check, HealthCheck};
use xds_protos::envoy::r#type::v3::CodecClientType;

use super::{duration, ConfigError};

/// `circuit_breakers.thresholds` for the DEFAULT priority.
#[derive(Debug, Clone, PartialEq)]
pub struct Breakers {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// When set, it replaces `max_retries` (as in Envoy).
    pub retry_budget: Option<RetryBudget>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryBudget {
    /// Share of active plus pending requests that may be retries, in percent.
    pub percent: f64,
    pub min_retry_concurrency: u32,
}

impl Default for Breakers {
    /// Envoy's defaults: 1024 of each, 3 concurrent retries.
    fn default() -> Self {
        Breakers {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outlier {
    pub consecutive_5xx: u32,
    pub enforcing_consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub enforcing_consecutive_gateway_failure: u32,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    pub timeout: Duration,
    pub interval: Duration,
    /// Used instead of `interval` until the cluster has carried traffic
    /// (Envoy's default: 60 s).
    pub no_traffic_interval: Duration,
    pub interval_jitter: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub kind: CheckKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    Http {
        /// Empty: the cluster name, as Envoy sends.
        host: String,
        path: String,
        /// Half-open `[start, end)` ranges; Envoy's default is `[200, 201)`.
        expected: Vec<(u16, u16)>,
        /// `codec_client_type: HTTP2`: the check is an HTTP/2 request.
        http2: bool,
    },
    Tcp {
        send: Vec<u8>,
        /// Every block must be found in the reply, in order; empty means
        /// connecting is enough.
        receive: Vec<Vec<u8>>,
    },
    /// `grpc.health.v1.Health/Check` over HTTP/2; passes on SERVING.
    Grpc {
        service: String,
        /// Empty: the cluster name, as Envoy sends.
        authority: String,
    },
}

/// Options of the load balancers beyond the policy itself.
#[derive(Debug, Clone, PartialEq)]
pub struct LbOptions {
    /// Below this percentage of healthy hosts, traffic goes to all hosts.
    pub healthy_panic_threshold: f64,
    pub choice_count: u32,
    pub active_request_bias: f64,
    pub ring_min: u64,
    pub ring_max: u64,
    pub maglev_table_size: u64,
}

impl Default for LbOptions {
    fn default() -> Self {
        LbOptions {
            healthy_panic_threshold: 50.0,
            choice_count: 2,
            active_request_bias: 1.0,
            ring_min: 1024,
            ring_max: 8 * 1024 * 1024,
            maglev_table_size: 65537,
        }
    }
}

fn dur(
    d: Option<&prost_types::Duration>,
    default: Duration,
    path: &str,
) -> Result<Duration, ConfigError> {
    match d {
        Some(d) => duration::to_std(d, path),
        None => Ok(default),
    }
}

pub fn breakers(c: &Cluster) -> Result<Breakers, ConfigError> {
    let mut b = Breakers::default();
    let Some(cb) = &c.circuit_breakers else {
        return Ok(b);
    };
    for (i, t) in cb.thresholds.iter().enumerate() {
        // Only DEFAULT-priority traffic exists in trellis; HIGH thresholds
        // are for routes with `priority: HIGH`, which the router refuses.
        if t.priority != 0 {
            continue;
        }
        let path = format!("circuit_breakers.thresholds[{i}]");
        b.max_connections = t.max_connections.unwrap_or(b.max_connections);
        b.max_pending_requests = t.max_pending_requests.unwrap_or(b.max_pending_requests);
        b.max_requests = t.max_requests.unwrap_or(b.max_requests);
        b.max_retries = t.max_retries.unwrap_or(b.max_retries);
        b.retry_budget = t
            .retry_budget
            .as_ref()
            .map(|r: &circuit_breakers::thresholds::RetryBudget| {
                let percent = r.budget_percent.as_ref().map_or(20.0, |p| p.value);
                if !(0.0..=100.0).contains(&percent) {
                    return Err(ConfigError::new(
                        format!("{path}.retry_budget.budget_percent"),
                        "must be between 0 and 100",
                    ));
                }
                Ok(RetryBudget {
                    percent,
                    min_retry_concurrency: r.min_retry_concurrency.unwrap_or(3),
                })
            })
            .transpose()?;
    }
    Ok(b)
}

pub fn outlier(c: &Cluster) -> Result<Option<Outlier>, ConfigError> {
    let Some(o) = &c.outlier_detection else {
        return Ok(None);
    };
    let at = |f: &str| format!("outlier_detection.{f}");
    match o.enforcing_success_rate {
        Some(v) if v > 0 => {
            return Err(ConfigError::new(
                at("enforcing_success_rate"),
                "success-rate ejection is not supported by trellis yet; set it to 0",
            ))
        }
        Some(_) => {}
        // Envoy's default is 100: say once per config that it does not apply.
        None => tracing::warn!(
            cluster = %c.name,
            "outlier_detection.enforcing_success_rate is unset: Envoy would eject by \
             success rate (its default 100); trellis ejects on consecutive failures only \
             (set it to 0 to silence this)"
        ),
    }
    let max_ejection_percent = o.max_ejection_percent.unwrap_or(10);
    if max_ejection_percent > 100 {
        return Err(ConfigError::new(
            at("max_ejection_percent"),
            "must be at most 100",
        ));
    }
    let base = dur(
        o.base_ejection_time.as_ref(),
        Duration::from_secs(30),
        &at("base_ejection_time"),
    )?;
    Ok(Some(Outlier {
        consecutive_5xx: o.consecutive_5xx.unwrap_or(5),
        enforcing_consecutive_5xx: o.enforcing_consecutive_5xx.unwrap_or(100),
        consecutive_gateway_failure: o.consecutive_gateway_failure.unwrap_or(5),
        enforcing_consecutive_gateway_failure: o.enforcing_consecutive_gateway_failure.unwrap_or(0),
        interval: dur(
            o.interval.as_ref(),
            Duration::from_secs(10),
            &at("interval"),
        )?
        .max(Duration::from_millis(1)),
        base_ejection_time: base,
        max_ejection_time: dur(
            o.max_ejection_time.as_ref(),
            Duration::from_secs(300).max(base),
            &at("max_ejection_time"),
        )?,
        max_ejection_percent,
    }))
}

pub fn health_checks(c: &Cluster) -> Result<Option<HealthCheckConfig>, ConfigError> {
    match c.health_checks.as_slice() {
        [] => Ok(None),
        [hc] => health_check(hc, &c.name)
            .map(Some)
            .map_err(|e| e.at("health_checks[0]")),
        _ => Err(ConfigError::new(
            "health_checks",
            "more than one health checker per cluster is not supported by trellis",
        )),
    }
}

fn health_check(hc: &HealthCheck, cluster: &str) -> Result<HealthCheckConfig, ConfigError> {
    let timeout = hc
        .timeout
        .as_ref()
        .ok_or_else(|| ConfigError::new("timeout", "is required"))
        .and_then(|d| duration::to_std(d, "timeout"))?;
    let interval = hc
        .interval
        .as_ref()
        .ok_or_else(|| ConfigError::new("interval", "is required"))
        .and_then(|d| duration::to_std(d, "interval"))?
        .max(Duration::from_millis(1));
    let kind = match &hc.health_checker {
        Some(health_check::HealthChecker::HttpHealthCheck(h)) => {
            if h.path.is_empty() {
                return Err(ConfigError::new("http_health_check.path", "is required"));
            }
            let mut expected = Vec::new();
            for (i, r) in h.expected_statuses.iter().enumerate() {
                let ok = |v: i64| u16::try_from(v).ok().filter(|v| (100..=600).contains(v));
                match (ok(r.start), ok(r.end)) {
                    (Some(s), Some(e)) if s < e => expected.push((s, e)),
                    _ => {
                        return Err(ConfigError::new(
                            format!("http_health_check.expected_statuses[{i}]"),
                            "must be a non-empty range within [100, 600]",
                        ))
                    }
                }
            }
            if expected.is_empty() {
                expected.push((200, 201));
            }
            CheckKind::Http {
                host: if h.host.is_empty() {
                    cluster.to_string()
                } else {
                    h.host.clone()
                },
                path: h.path.clone(),
                expected,
                http2: h.codec_client_type == CodecClientType::Http2 as i32,
            }
        }
        Some(health_check::HealthChecker::TcpHealthCheck(t)) => CheckKind::Tcp {
            send: t.send.as_ref().map(payload).unwrap_or_default(),
            receive: t.receive.iter().map(payload).collect(),
        },
        Some(health_check::HealthChecker::GrpcHealthCheck(g)) => CheckKind::Grpc {
            service: g.service_name.clone(),
            authority: if g.authority.is_empty() {
                cluster.to_string()
            } else {
                g.authority.clone()
            },
        },
        Some(_) => {
            return Err(ConfigError::new(
                "health_checker",
                "only http_health_check, tcp_health_check and grpc_health_check are supported by trellis",
            ))
        }
        None => {
            return Err(ConfigError::new(
                "health_checker",
                "http_health_check or tcp_health_check is required",
            ))
        }
    };
    Ok(HealthCheckConfig {
        timeout,
        interval,
        no_traffic_interval: dur(
            hc.no_traffic_interval.as_ref(),
            Duration::from_secs(60),
            "no_traffic_interval",
        )?
        .max(Duration::from_millis(1)),
        interval_jitter: dur(
            hc.interval_jitter.as_ref(),
            Duration::ZERO,
            "interval_jitter",
        )?,
        unhealthy_threshold: threshold(hc.unhealthy_threshold, "unhealthy_threshold")?,
        healthy_threshold: threshold(hc.healthy_threshold, "healthy_threshold")?,
        kind,
    })
}

/// Envoy refuses a health check without either threshold (verified with
/// 1.40: "HealthCheckValidationError.UnhealthyThreshold: value is
/// required"); a zero acts as one.
fn threshold(v: Option<u32>, field: &str) -> Result<u32, ConfigError> {
    v.map(|n| n.max(1))
        .ok_or_else(|| ConfigError::new(field, "is required"))
}

fn payload(p: &health_check::Payload) -> Vec<u8> {
    match &p.payload {
        Some(health_check::payload::Payload::Text(hex)) => decode_hex(hex),
        Some(health_check::payload::Payload::Binary(b)) => b.clone(),
        None => Vec::new(),
    }
}

/// Envoy's `text` payloads are hex; an odd or non-hex string yields what
/// decodes before the first bad pair.
fn decode_hex(s: &str) -> Vec<u8> {
    s.as_bytes()
        .chunks(2)
        .map_while(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
        })
        .collect()
}

pub fn lb_options(c: &Cluster) -> Result<LbOptions, ConfigError> {
    let mut o = LbOptions::default();
    if let Some(p) = c
        .common_lb_config
        .as_ref()
        .and_then(|l| l.healthy_panic_threshold.as_ref())
    {
        if !(0.0..=100.0).contains(&p.value) {
            return Err(ConfigError::new(
                "common_lb_config.healthy_panic_threshold",
                "must be between 0 and 100",
            ));
        }
        o.healthy_panic_threshold = p.value;
    }
    match &c.lb_config {
        Some(cluster::LbConfig::LeastRequestLbConfig(l)) => {
            o.choice_count = l.choice_count.unwrap_or(2);
            if o.choice_count < 2 {
                return Err(ConfigError::new(
                    "least_request_lb_config.choice_count",
                    "must be at least 2",
                ));
            }
            if let Some(b) = &l.active_request_bias {
                if !(0.0..=100.0).contains(&b.default_value) {
                    return Err(ConfigError::new(
                        "least_request_lb_config.active_request_bias",
                        "must be between 0 and 100",
                    ));
                }
                o.active_request_bias = b.default_value;
            }
        }
        Some(cluster::LbConfig::RingHashLbConfig(r)) => {
            o.ring_min = r.minimum_ring_size.unwrap_or(o.ring_min).max(1);
            o.ring_max = r.maximum_ring_size.unwrap_or(o.ring_max).max(1);
            if o.ring_min > o.ring_max {
                return Err(ConfigError::new(
                    "ring_hash_lb_config.minimum_ring_size",
                    "must not exceed maximum_ring_size",
                ));
            }
        }
        Some(cluster::LbConfig::MaglevLbConfig(m)) => {
            o.maglev_table_size = m.table_size.unwrap_or(o.maglev_table_size);
            if !is_prime(o.maglev_table_size) || o.maglev_table_size > 5_000_011 {
                return Err(ConfigError::new(
                    "maglev_lb_config.table_size",
                    "must be a prime number no larger than 5000011",
                ));
            }
        }
        _ => {}
    }
    Ok(o)
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_defaults() {
        let c = Cluster::default();
        assert_eq!(breakers(&c).unwrap(), Breakers::default());
        assert_eq!(outlier(&c).unwrap(), None);
        assert_eq!(lb_options(&c).unwrap(), LbOptions::default());
        assert!(is_prime(65537) && !is_prime(65536));
        assert_eq!(decode_hex("50494e47"), b"PING");
    }

    #[test]
    fn health_check_thresholds_are_required_as_in_envoy() {
        let d = |s| prost_types::Duration {
            seconds: s,
            nanos: 0,
        };
        let mut hc = HealthCheck {
            timeout: Some(d(1)),
            interval: Some(d(1)),
            healthy_threshold: Some(2),
            health_checker: Some(health_check::HealthChecker::TcpHealthCheck(
                Default::default(),
            )),
            ..Default::default()
        };
        let e = health_check(&hc, "app").unwrap_err();
        assert_eq!(e.path, "unhealthy_threshold", "{e}");
        hc.unhealthy_threshold = Some(3);
        let c = health_check(&hc, "app").unwrap();
        assert_eq!((c.unhealthy_threshold, c.healthy_threshold), (3, 2));
        hc.healthy_threshold = None;
        let e = health_check(&hc, "app").unwrap_err();
        assert_eq!(e.path, "healthy_threshold", "{e}");
    }
}
