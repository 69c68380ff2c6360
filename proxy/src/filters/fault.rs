//! `envoy.filters.http.fault`: injected delays and aborts, by percentage, and
//! by request header (`x-envoy-fault-*`) when the config asks for header
//! control, limited to requests matching `headers` and to `upstream_cluster`.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use prost_types::Any;
use xds_protos::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use xds_protos::envoy::extensions::filters::http::fault::v3::{fault_abort::ErrorType, HttpFault};
use xds_protos::envoy::r#type::v3::FractionalPercent;

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
    delay: Option<(Option<Duration>, Share)>,
    abort: Option<(AbortKind, Share)>,
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

/// A configured percentage, kept as Envoy's numerator and denominator: a
/// `-percentage` header replaces the numerator (capped by the configured
/// one) over the same denominator.
#[derive(Debug, Clone, Copy)]
struct Share {
    numerator: u32,
    /// Parts per million one unit of the numerator is worth.
    unit_ppm: u32,
}

impl Share {
    fn of(p: Option<&FractionalPercent>) -> Share {
        let unit = FractionalPercent {
            numerator: 1,
            denominator: p.map_or(0, |p| p.denominator),
        };
        Share {
            numerator: p.map_or(0, |p| p.numerator),
            unit_ppm: per_million(Some(&unit), 0),
        }
    }

    fn ppm(self, header: Option<u64>) -> u32 {
        let numerator = match header {
            Some(n) => u64::from(self.numerator).min(n) as u32,
            None => self.numerator,
        };
        numerator.saturating_mul(self.unit_ppm).min(1_000_000)
    }
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
                let ppm = Share::of(d.percentage.as_ref());
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
                let ppm = Share::of(a.percentage.as_ref());
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
    /// value from the request, and a `-percentage` header lowers (never
    /// raises) their configured share; fixed faults ignore the headers, as
    /// in Envoy.
    pub fn decide(&self, h: &HeaderMap) -> Injection {
        let num = |name: &str| -> Option<u64> { h.get(name)?.to_str().ok()?.trim().parse().ok() };
        let mut out = Injection::default();
        if let Some((fixed, share)) = self.delay {
            let (value, ppm) = match fixed {
                Some(d) => (Some(d), share.ppm(None)),
                None => (
                    num(DELAY_HEADER).map(Duration::from_millis),
                    share.ppm(num(DELAY_PERCENT_HEADER)),
                ),
            };
            if let Some(d) = value {
                if super::draw(ppm) {
                    out.delay = Some(d);
                }
            }
        }
        if let Some((kind, share)) = self.abort {
            let (value, ppm) = match kind {
                AbortKind::Http(s) => (Some(Abort::Http(s)), share.ppm(None)),
                AbortKind::Grpc(g) => (Some(Abort::Grpc(g)), share.ppm(None)),
                AbortKind::Header => {
                    let value = match (num(ABORT_HEADER), num(ABORT_GRPC_HEADER)) {
                        (Some(s), _) => u16::try_from(s)
                            .ok()
                            .filter(|s| (200..600).contains(s))
                            .and_then(|s| StatusCode::from_u16(s).ok())
                            .map(Abort::Http),
                        (None, Some(g)) => u32::try_from(g).ok().map(Abort::Grpc),
                        (None, None) => None,
                    };
                    (value, share.ppm(num(ABORT_PERCENT_HEADER)))
                }
            };
            if let Some(a) = value {
                if super::draw(ppm) {
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
        h.insert(DELAY_PERCENT_HEADER, "0".parse().unwrap());
        assert!((0..1000).all(|_| f.decide(&h).delay.is_none()));
        // A fixed abort keeps its share whatever the percentage header says.
        h.insert(ABORT_PERCENT_HEADER, "0".parse().unwrap());
        let aborts = (0..10_000).filter(|_| f.decide(&h).abort.is_some()).count();
        assert!((2_700..3_300).contains(&aborts), "{aborts}");
    }

    #[test]
    fn a_percentage_header_is_a_numerator_over_the_configured_denominator() {
        let cfg = HttpFault {
            abort: Some(FaultAbort {
                percentage: Some(FractionalPercent {
                    numerator: 5_000,
                    denominator: 1, // TEN_THOUSAND
                }),
                error_type: Some(ErrorType::HeaderAbort(fault_abort::HeaderAbort {})),
                ..Default::default()
            }),
            ..Default::default()
        };
        let f = Fault::compile(&xds_protos::any::pack(&cfg)).unwrap();
        let mut h = HeaderMap::new();
        h.insert(ABORT_HEADER, "418".parse().unwrap());
        let share = |h: &HeaderMap| (0..20_000).filter(|_| f.decide(h).abort.is_some()).count();
        let half = share(&h);
        assert!((9_500..10_500).contains(&half), "{half}");
        // 1000 out of 10 000, not out of 100.
        h.insert(ABORT_PERCENT_HEADER, "1000".parse().unwrap());
        let tenth = share(&h);
        assert!((1_700..2_300).contains(&tenth), "{tenth}");
        // Never above the configured numerator.
        h.insert(ABORT_PERCENT_HEADER, "9000".parse().unwrap());
        let capped = share(&h);
        assert!((9_500..10_500).contains(&capped), "{capped}");
    }
}
