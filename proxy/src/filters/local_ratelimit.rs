//! `envoy.filters.http.local_ratelimit`: a token bucket per filter instance,
//! virtual host or route (`typed_per_filter_config`). Taking a token is one
//! compare-and-swap on a packed (tokens, fill epoch) word.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, StatusCode};
use prost_types::Any;
use xds_protos::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as Proto;

use super::per_million;
use crate::config::ConfigError;

#[derive(Debug)]
pub struct LocalRateLimit {
    pub bucket: Option<TokenBucket>,
    /// Shares (per million) of requests checked and of limits enforced;
    /// Envoy's default for both is 0%: an unset `filter_enabled` disables.
    pub enabled_ppm: u32,
    pub enforced_ppm: u32,
    pub status: StatusCode,
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug)]
pub struct TokenBucket {
    max: u32,
    per_fill: u32,
    interval: Duration,
    start: Instant,
    /// tokens << 32 | fill epoch (intervals since `start`).
    state: AtomicU64,
}

impl TokenBucket {
    pub fn new(max: u32, per_fill: u32, interval: Duration) -> TokenBucket {
        TokenBucket {
            max,
            per_fill,
            interval,
            start: Instant::now(),
            state: AtomicU64::new(u64::from(max) << 32),
        }
    }

    /// Takes one token if there is one, refilling first for every interval
    /// that has passed.
    pub fn take(&self) -> bool {
        self.take_at(self.start.elapsed())
    }

    /// `take` at `since_start` after the bucket was made: tests drive the
    /// clock instead of sleeping through intervals.
    fn take_at(&self, since_start: Duration) -> bool {
        let epoch = (since_start.as_nanos() / self.interval.as_nanos().max(1)) as u64;
        let epoch = epoch.min(u64::from(u32::MAX));
        let mut cur = self.state.load(Ordering::Relaxed);
        loop {
            let (mut tokens, last) = (cur >> 32, cur & 0xffff_ffff);
            if epoch > last {
                tokens =
                    (tokens + (epoch - last) * u64::from(self.per_fill)).min(u64::from(self.max));
            }
            if tokens == 0 {
                return false;
            }
            let next = ((tokens - 1) << 32) | epoch.max(last);
            match self
                .state
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }
}

impl LocalRateLimit {
    /// `top_level`: the connection manager's own instance, which may leave
    /// the bucket to per-route configs; a per-route config needs one.
    pub fn compile(any: &Any, top_level: bool) -> Result<LocalRateLimit, ConfigError> {
        let p: Proto =
            xds_protos::any::unpack(any).map_err(|e| ConfigError::new("typed_config", e))?;
        if p.local_rate_limit_per_downstream_connection {
            return Err(ConfigError::new(
                "local_rate_limit_per_downstream_connection",
                "is not supported by trellis",
            ));
        }
        if !p.descriptors.is_empty() {
            return Err(ConfigError::new(
                "descriptors",
                "is not supported by trellis",
            ));
        }
        let bucket = match &p.token_bucket {
            None if top_level => None,
            None => return Err(ConfigError::new("token_bucket", "is required")),
            Some(b) => {
                let interval = b
                    .fill_interval
                    .as_ref()
                    .ok_or_else(|| ConfigError::new("token_bucket.fill_interval", "is required"))
                    .and_then(|d| {
                        crate::config::duration::to_std(d, "token_bucket.fill_interval")
                    })?;
                if interval < Duration::from_millis(50) {
                    return Err(ConfigError::new(
                        "token_bucket.fill_interval",
                        "must be at least 50ms",
                    ));
                }
                if b.max_tokens == 0 {
                    return Err(ConfigError::new(
                        "token_bucket.max_tokens",
                        "must be at least 1",
                    ));
                }
                Some(TokenBucket::new(
                    b.max_tokens,
                    b.tokens_per_fill.unwrap_or(1),
                    interval,
                ))
            }
        };
        let status = match p.status.as_ref().map(|s| s.code) {
            None | Some(0) => StatusCode::TOO_MANY_REQUESTS,
            Some(c) => u16::try_from(c)
                .ok()
                .filter(|c| *c >= 400)
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| ConfigError::new("status.code", "must be an error status"))?,
        };
        let mut response_headers = Vec::new();
        for (i, h) in p.response_headers_to_add.iter().enumerate() {
            let path = format!("response_headers_to_add[{i}]");
            let Some(hv) = &h.header else {
                return Err(ConfigError::new(path, "header is required"));
            };
            let name = HeaderName::from_bytes(hv.key.as_bytes()).map_err(|_| {
                ConfigError::new(format!("{path}.header.key"), "invalid header name")
            })?;
            let value = HeaderValue::from_str(&hv.value)
                .map_err(|_| ConfigError::new(format!("{path}.header.value"), "invalid value"))?;
            response_headers.push((name, value));
        }
        Ok(LocalRateLimit {
            bucket,
            enabled_ppm: per_million(
                p.filter_enabled
                    .as_ref()
                    .and_then(|f| f.default_value.as_ref()),
                0,
            ),
            enforced_ppm: per_million(
                p.filter_enforced
                    .as_ref()
                    .and_then(|f| f.default_value.as_ref()),
                0,
            ),
            status,
            response_headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_drains_and_refills() {
        let ms = Duration::from_millis;
        let b = TokenBucket::new(3, 2, ms(50));
        assert_eq!((0..5).filter(|_| b.take_at(ms(10))).count(), 3);
        assert!(!b.take_at(ms(49)), "no refill within the interval");
        assert_eq!((0..5).filter(|_| b.take_at(ms(60))).count(), 2);
        // Several intervals refill up to the bucket's size, no more.
        assert_eq!((0..5).filter(|_| b.take_at(ms(400))).count(), 3);
    }
}
