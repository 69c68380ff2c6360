//! HTTP filters that run before the router: fault injection and local rate
//! limiting. Each is compiled once per config; per-request work is a few
//! atomics and random draws, never a lock.

pub mod fault;
pub mod local_ratelimit;
pub mod mirror;

use std::sync::Arc;

use prost_types::Any;
use xds_protos::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};

use crate::config::ConfigError;
use crate::stats::{Counter, Gauge, Scope, StatSource, Visitor};

pub const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
pub const LOCAL_RATELIMIT: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

/// One configured filter of the connection manager's chain.
#[derive(Debug)]
pub enum HttpFilter {
    Fault {
        name: String,
        config: Arc<fault::Fault>,
    },
    LocalRateLimit {
        name: String,
        config: Arc<local_ratelimit::LocalRateLimit>,
    },
}

impl HttpFilter {
    /// `None` for the router (and any other type URL the caller handles).
    pub fn compile(name: &str, any: &Any) -> Option<Result<HttpFilter, ConfigError>> {
        Some(match any.type_url.as_str() {
            FAULT => fault::Fault::compile(any).map(|c| HttpFilter::Fault {
                name: name.to_string(),
                config: Arc::new(c),
            }),
            LOCAL_RATELIMIT => local_ratelimit::LocalRateLimit::compile(any, true).map(|c| {
                HttpFilter::LocalRateLimit {
                    name: name.to_string(),
                    config: Arc::new(c),
                }
            }),
            _ => return None,
        })
    }
}

/// A route's or virtual host's `typed_per_filter_config` entry that trellis
/// implements, keyed by the filter name it overrides.
#[derive(Debug)]
pub enum FilterOverride {
    Fault(Arc<fault::Fault>),
    LocalRateLimit(Arc<local_ratelimit::LocalRateLimit>),
}

/// Compiles the entries of `typed_per_filter_config` that belong to filters
/// trellis implements; other entries stay accepted and ignored.
pub fn compile_overrides(
    map: &std::collections::HashMap<String, Any>,
) -> Result<Vec<(String, FilterOverride)>, ConfigError> {
    let mut out = Vec::new();
    for (name, any) in map {
        let path = format!("typed_per_filter_config[\"{name}\"]");
        let o = match any.type_url.as_str() {
            FAULT => FilterOverride::Fault(Arc::new(
                fault::Fault::compile(any).map_err(|e| e.at(path.clone()))?,
            )),
            LOCAL_RATELIMIT => FilterOverride::LocalRateLimit(Arc::new(
                local_ratelimit::LocalRateLimit::compile(any, false).map_err(|e| e.at(path))?,
            )),
            _ => continue,
        };
        out.push((name.clone(), o));
    }
    Ok(out)
}

/// A probability out of a million, from Envoy's `FractionalPercent`.
pub fn per_million(p: Option<&FractionalPercent>, default: u32) -> u32 {
    let Some(p) = p else {
        return default;
    };
    let scale = match DenominatorType::try_from(p.denominator) {
        Ok(DenominatorType::Hundred) => 10_000,
        Ok(DenominatorType::TenThousand) => 100,
        _ => 1,
    };
    p.numerator.saturating_mul(scale).min(1_000_000)
}

/// True with probability `ppm` / 1e6.
pub fn draw(ppm: u32) -> bool {
    ppm >= 1_000_000 || (crate::rng::random::<u32>() % 1_000_000) < ppm
}

/// The stats of the filters of one connection manager, under its
/// `http.PREFIX.` scope.
#[derive(Debug)]
pub struct FilterStats {
    scope: Scope,
    pub delays_injected: Counter,
    pub aborts_injected: Counter,
    pub active_faults: Gauge,
    pub faults_overflow: Counter,
    pub rl_enabled: Counter,
    pub rl_enforced: Counter,
    pub rl_rate_limited: Counter,
    pub rl_ok: Counter,
    /// Listed once a connection manager with this prefix had filters.
    pub listed: std::sync::atomic::AtomicBool,
}

impl FilterStats {
    pub fn new(prefix: Arc<str>) -> FilterStats {
        FilterStats {
            scope: Scope::new("http", Some(("envoy_http_conn_manager_prefix", prefix))),
            delays_injected: Counter::default(),
            aborts_injected: Counter::default(),
            active_faults: Gauge::default(),
            faults_overflow: Counter::default(),
            rl_enabled: Counter::default(),
            rl_enforced: Counter::default(),
            rl_rate_limited: Counter::default(),
            rl_ok: Counter::default(),
            listed: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl StatSource for FilterStats {
    fn visit(&self, v: &mut dyn Visitor) {
        if !self.listed.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let s = &self.scope;
        v.counter(s, "fault.delays_injected", self.delays_injected.get());
        v.counter(s, "fault.aborts_injected", self.aborts_injected.get());
        v.gauge(s, "fault.active_faults", self.active_faults.get());
        v.counter(s, "fault.faults_overflow", self.faults_overflow.get());
        v.counter(s, "http_local_rate_limit.enabled", self.rl_enabled.get());
        v.counter(s, "http_local_rate_limit.enforced", self.rl_enforced.get());
        v.counter(
            s,
            "http_local_rate_limit.rate_limited",
            self.rl_rate_limited.get(),
        );
        v.counter(s, "http_local_rate_limit.ok", self.rl_ok.get());
    }
}

/// What the filters see of a request.
pub struct Request<'a> {
    pub parts: &'a http::request::Parts,
    pub host: &'a str,
    pub matched: &'a crate::router::Matched<'a>,
}

impl Request<'_> {
    /// The most specific override (route, then virtual host) for the filter
    /// named `name`.
    fn find(&self, name: &str) -> Option<&FilterOverride> {
        self.matched
            .route
            .filter_overrides
            .iter()
            .chain(&self.matched.virtual_host.filter_overrides)
            .find(|(n, _)| n == name)
            .map(|(_, o)| o)
    }

    /// The routed cluster when the route names one, for `upstream_cluster`.
    fn cluster(&self) -> Option<&str> {
        match &self.matched.route.action {
            crate::router::Action::Forward(f) => match &f.cluster {
                crate::router::ClusterSpecifier::Cluster(c) => Some(c),
                _ => None,
            },
            _ => None,
        }
    }
}

type Reply = (
    http::Response<crate::body::Body>,
    crate::http::ResponseFlags,
);

/// Runs the chain in order. `Some` is a local reply that ends the request;
/// a request let through may still carry flags (`DI`), set on `noted`.
pub async fn run(
    chain: &[HttpFilter],
    req: &Request<'_>,
    stats: &FilterStats,
    noted: &mut crate::http::ResponseFlags,
) -> Option<Reply> {
    for f in chain {
        let reply = match f {
            HttpFilter::Fault { name, config } => {
                let config = match req.find(name) {
                    Some(FilterOverride::Fault(c)) => c,
                    _ => config,
                };
                inject(config, req, stats, noted).await
            }
            HttpFilter::LocalRateLimit { name, config } => {
                let config = match req.find(name) {
                    Some(FilterOverride::LocalRateLimit(c)) => c,
                    _ => config,
                };
                limit(config, stats)
            }
        };
        if reply.is_some() {
            return reply;
        }
    }
    None
}

struct ActiveFault<'a>(&'a Gauge);

impl Drop for ActiveFault<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn inject(
    f: &fault::Fault,
    req: &Request<'_>,
    stats: &FilterStats,
    noted: &mut crate::http::ResponseFlags,
) -> Option<Reply> {
    if let Some(want) = &f.upstream_cluster {
        if req.cluster() != Some(want.as_str()) {
            return None;
        }
    }
    let view = crate::router::RequestView::new(
        req.host,
        req.parts,
        req.parts.uri.path_and_query().map(|p| p.as_str()),
        0,
    );
    if !f.headers.iter().all(|m| m.matches(&view)) {
        return None;
    }
    let injection = f.decide(&req.parts.headers);
    if injection == fault::Injection::default() {
        return None;
    }
    if f.max_active_faults
        .is_some_and(|max| stats.active_faults.get() >= i64::from(max))
    {
        stats.faults_overflow.inc();
        return None;
    }
    stats.active_faults.inc();
    let _active = ActiveFault(&stats.active_faults);
    if let Some(d) = injection.delay {
        stats.delays_injected.inc();
        noted.set(crate::http::ResponseFlags::DELAY_INJECTED);
        tokio::time::sleep(d).await;
    }
    let abort = injection.abort?;
    stats.aborts_injected.inc();
    let mut resp = http::Response::new(crate::body::full(bytes::Bytes::from_static(
        b"fault filter abort",
    )));
    match abort {
        fault::Abort::Http(status) => {
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain"),
            );
        }
        fault::Abort::Grpc(code) => {
            *resp.body_mut() = crate::body::empty();
            let h = resp.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", code.into());
            h.insert(
                "grpc-message",
                http::HeaderValue::from_static("fault filter abort"),
            );
        }
    }
    let mut flags = crate::http::ResponseFlags::default();
    flags.set(crate::http::ResponseFlags::FAULT_INJECTED);
    Some((resp, flags))
}

fn limit(l: &local_ratelimit::LocalRateLimit, stats: &FilterStats) -> Option<Reply> {
    let bucket = l.bucket.as_ref()?;
    if !draw(l.enabled_ppm) {
        return None;
    }
    stats.rl_enabled.inc();
    if bucket.take() {
        stats.rl_ok.inc();
        return None;
    }
    stats.rl_rate_limited.inc();
    if !draw(l.enforced_ppm) {
        return None;
    }
    stats.rl_enforced.inc();
    let mut resp = http::Response::new(crate::body::full(bytes::Bytes::from_static(
        b"local_rate_limited",
    )));
    *resp.status_mut() = l.status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    h.insert(
        "x-envoy-ratelimited",
        http::HeaderValue::from_static("true"),
    );
    for (k, v) in &l.response_headers {
        h.append(k.clone(), v.clone());
    }
    let mut flags = crate::http::ResponseFlags::default();
    flags.set(crate::http::ResponseFlags::RATE_LIMITED);
    Some((resp, flags))
}
