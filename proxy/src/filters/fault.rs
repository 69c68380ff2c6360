//! `envoy.filters.http.fault`: injected delays and aborts, by percentage, and
//! by request header (`x-envoy-fault-*`) when the config asks for header
//! control, limited to requests matching `headers` and to `upstream_cluster`.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use prost_types::Any;
use xds_protos::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use xds_protos::envoy::extensions::filters::http::fault::v3::{fault_abort::ErrorType, HttpFault};

use super::per_million;
use crate::config::ConfigError;
use crate::router::HeaderMatcher;

const DELAY_HEADER: &str = "x-envoy-fault-delay-request";
const DELAY_PERCENT_HEADER: &str = "x-envoy-fault-delay-request-percentage";
const ABORT_HEADER: &str = "x-envoy-fault-abort-request";
const ABORT_GRPC_HEADER: &str = "x-envoy-fault-abort-grpc-request";
const ABORT_PERCENT_HEADER: &str = "x-envoy-fault-abort-request-percentage";

#[derive(Debug)]
pub struct Fault {
    /// `None` inside: the delay comes from the request header.
    delay: Option<(Option<Duration>, u32)>,
    abort: Option<(AbortKind, u32)>,
    pub(crate) headers: Vec<HeaderMatcher>,
    pub(crate) upstream_cluster: Option<String>,
    pub(crate) max_active_faults: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
enum AbortKind {
    Http(StatusCode),
    Grpc(u32),
    Header,
}

/// What to inject into one request.
#[derive(Debug, Default, PartialEq)]
pub struct Injection {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

#[derive(Debug, PartialEq)]
pub enum Abort {
    Http(StatusCode),
    Grpc(u32),
}

impl Fault {
    pub fn compile(any: &Any) -> Result<Fault, ConfigError> {
        let f: HttpFault =
            xds_protos::any::unpack(any).map_err(|e| ConfigError::new("typed_config", e))?;
        if f.response_rate_limit.is_some() {
            return Err(ConfigError::new(
                "response_rate_limit",
                "is not supported by trellis",
            ));
        }
        if !f.downstream_nodes.is_empty() {
            return Err(ConfigError::new(
                "downstream_nodes",
                "is not supported by trellis",
            ));
        }
        let delay = match &f.delay {
            None => None,
            Some(d) => {
                let ppm = per_million(d.percentage.as_ref(), 0);
                match &d.fault_delay_secifier {
                    Some(FaultDelaySecifier::FixedDelay(t)) => Some((
                        Some(crate::config::duration::to_std(t, "delay.fixed_delay")?),
                        ppm,
                    )),
                    Some(FaultDelaySecifier::HeaderDelay(_)) => Some((None, ppm)),
                    None => {
                        return Err(ConfigError::new(
                            "delay",
                            "fixed_delay or header_delay is required",
                        ))
                    }
                }
            }
        };
        let abort = match &f.abort {
            None => None,
            Some(a) => {
                let ppm = per_million(a.percentage.as_ref(), 0);
                let kind = match a.error_type {
                    Some(ErrorType::HttpStatus(s)) => AbortKind::Http(
                        u16::try_from(s)
                            .ok()
                            .filter(|s| (200..600).contains(s))
                            .and_then(|s| StatusCode::from_u16(s).ok())
                            .ok_or_else(|| {
                                ConfigError::new("abort.http_status", "must be in [200, 600)")
                            })?,
                    ),
                    Some(ErrorType::GrpcStatus(g)) => AbortKind::Grpc(g),
                    Some(ErrorType::HeaderAbort(_)) => AbortKind::Header,
                    None => {
                        return Err(ConfigError::new(
                            "abort",
                            "http_status, grpc_status or header_abort is required",
                        ))
                    }
                };
                Some((kind, ppm))
            }
        };
        let headers = f
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| HeaderMatcher::compile(h).map_err(|e| e.at(format!("headers[{i}]"))))
            .collect::<Result<_, _>>()?;
        Ok(Fault {
            delay,
            abort,
            headers,
            upstream_cluster: (!f.upstream_cluster.is_empty()).then(|| f.upstream_cluster.clone()),
            max_active_faults: f.max_active_faults,
        })
    }

    /// Draws this request's faults. Header-controlled faults take their
    /// value from the request; a `-percentage` header lowers (never raises)
    /// the configured share, as in Envoy.
    pub fn decide(&self, h: &HeaderMap) -> Injection {
        let num = |name: &str| -> Option<u64> { h.get(name)?.to_str().ok()?.trim().parse().ok() };
        let share = |configured: u32, header: &str| match num(header) {
            // The header's numerator is out of 100 for a HUNDRED config.
            Some(n) => configured.min((n.min(100) * 10_000) as u32),
            None => configured,
        };
        let mut out = Injection::default();
        if let Some((fixed, ppm)) = self.delay {
            let value = match fixed {
                Some(d) => Some(d),
                None => num(DELAY_HEADER).map(Duration::from_millis),
            };
            if let Some(d) = value {
                if super::draw(share(ppm, DELAY_PERCENT_HEADER)) {
                    out.delay = Some(d);
                }
            }
        }
        if let Some((kind, ppm)) = self.abort {
            let value = match kind {
                AbortKind::Http(s) => Some(Abort::Http(s)),
                AbortKind::Grpc(g) => Some(Abort::Grpc(g)),
                AbortKind::Header => match (num(ABORT_HEADER), num(ABORT_GRPC_HEADER)) {
                    (Some(s), _) => u16::try_from(s)
                        .ok()
                        .filter(|s| (200..600).contains(s))
                        .and_then(|s| StatusCode::from_u16(s).ok())
                        .map(Abort::Http),
                    (None, Some(g)) => u32::try_from(g).ok().map(Abort::Grpc),
                    (None, None) => None,
                },
            };
            if let Some(a) = value {
                if super::draw(share(ppm, ABORT_PERCENT_HEADER)) {
                    out.abort = Some(a);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_protos::envoy::extensions::filters::common::fault::v3::{fault_delay, FaultDelay};
    use xds_protos::envoy::extensions::filters::http::fault::v3::{fault_abort, FaultAbort};
    use xds_protos::envoy::r#type::v3::FractionalPercent;

    fn pct(n: u32) -> Option<FractionalPercent> {
        Some(FractionalPercent {
            numerator: n,
            denominator: 0,
        })
    }

    #[test]
    fn shares_and_header_control() {
        let cfg = HttpFault {
            delay: Some(FaultDelay {
                percentage: pct(100),
                fault_delay_secifier: Some(FaultDelaySecifier::HeaderDelay(
                    fault_delay::HeaderDelay {},
                )),
            }),
            abort: Some(FaultAbort {
                percentage: pct(30),
                error_type: Some(ErrorType::HttpStatus(503)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let f = Fault::compile(&xds_protos::any::pack(&cfg)).unwrap();
        let mut h = HeaderMap::new();
        let aborts = (0..10_000).filter(|_| f.decide(&h).abort.is_some()).count();
        assert!((2_700..3_300).contains(&aborts), "{aborts}");
        assert_eq!(f.decide(&h).delay, None, "no header, no delay");
        h.insert(DELAY_HEADER, "25".parse().unwrap());
        assert_eq!(f.decide(&h).delay, Some(Duration::from_millis(25)));
        h.insert(ABORT_PERCENT_HEADER, "0".parse().unwrap());
        assert!((0..1000).all(|_| f.decide(&h).abort.is_none()));
        let _ = fault_abort::HeaderAbort {};
    }
}
