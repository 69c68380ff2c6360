//! Distributed tracing: the trace context a request arrives with (W3C
//! `traceparent`/`tracestate`, B3 multi and single header, AWS
//! `X-Amzn-Trace-Id`), a server span per request and a client span for its
//! trip upstream, the context re-injected so the next hop continues the same
//! trace, and spans exported over OTLP/gRPC by [`otlp::Exporter`].

pub mod otlp;

use std::fmt::Write;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};
use xds_protos::envoy::config::core::v3::grpc_service::TargetSpecifier;
use xds_protos::envoy::config::trace::v3::{tracing::http::ConfigType, OpenTelemetryConfig};
use xds_protos::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;

use crate::config::ConfigError;

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static B3: HeaderName = HeaderName::from_static("b3");
static B3_TRACE: HeaderName = HeaderName::from_static("x-b3-traceid");
static B3_SPAN: HeaderName = HeaderName::from_static("x-b3-spanid");
static B3_PARENT: HeaderName = HeaderName::from_static("x-b3-parentspanid");
static B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
static AMZN: HeaderName = HeaderName::from_static("x-amzn-trace-id");

const OTEL: &str = "envoy.config.trace.v3.OpenTelemetryConfig";

/// The HCM's `tracing.provider`: where spans go and what service they name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TracingConfig {
    pub collector_cluster: Arc<str>,
    pub service_name: Arc<str>,
}

impl TracingConfig {
    /// `None` when `tracing` is set without a provider: Envoy then only
    /// keeps request ids, which trellis always does.
    pub fn compile(t: &Tracing) -> Result<Option<TracingConfig>, ConfigError> {
        // Every request is sampled; a lower percentage would be ignored.
        for (field, p) in [
            ("client_sampling", &t.client_sampling),
            ("random_sampling", &t.random_sampling),
            ("overall_sampling", &t.overall_sampling),
        ] {
            if p.as_ref().is_some_and(|p| p.value < 100.0) {
                return Err(ConfigError::new(
                    field,
                    "sampling below 100% is not supported by trellis",
                ));
            }
        }
        let Some(p) = &t.provider else {
            return Ok(None);
        };
        let Some(ConfigType::TypedConfig(any)) = &p.config_type else {
            return Err(ConfigError::new(
                "provider.typed_config",
                "typed_config is required",
            ));
        };
        if any.type_url.rsplit('/').next() != Some(OTEL) {
            return Err(ConfigError::new(
                "provider.typed_config",
                format!("tracer {} is not supported by trellis", any.type_url),
            ));
        }
        let c: OpenTelemetryConfig = xds_protos::any::unpack(any)
            .map_err(|e| ConfigError::new("provider.typed_config", e))?;
        let cluster = match c
            .grpc_service
            .as_ref()
            .and_then(|g| g.target_specifier.as_ref())
        {
            Some(TargetSpecifier::EnvoyGrpc(g)) if !g.cluster_name.is_empty() => {
                g.cluster_name.as_str()
            }
            _ => {
                return Err(ConfigError::new(
                    "provider.typed_config.grpc_service",
                    "an envoy_grpc cluster_name is required (OTLP over gRPC)",
                ))
            }
        };
        Ok(Some(TracingConfig {
            collector_cluster: Arc::from(cluster),
            service_name: Arc::from(if c.service_name.is_empty() {
                "unknown_service:envoy"
            } else {
                c.service_name.as_str()
            }),
        }))
    }
}

/// Which header formats the request came with: each is passed on updated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Formats {
    b3_single: bool,
    b3_multi: bool,
    amzn: bool,
}

/// One request's place in its trace.
#[derive(Debug, Clone)]
pub struct Trace {
    pub trace_id: [u8; 16],
    /// The span that called us, if the request carried one.
    pub parent: Option<[u8; 8]>,
    /// This hop's server span.
    pub server: [u8; 8],
    /// The span of the trip upstream.
    pub client: [u8; 8],
    pub sampled: bool,
    pub tracestate: Option<String>,
    pub start: SystemTime,
    /// When the request went upstream and its response headers came back.
    pub client_start: Option<SystemTime>,
    pub client_end: Option<SystemTime>,
    formats: Formats,
}

impl Trace {
    /// Continues the trace the headers carry, or starts one.
    pub fn start(h: &HeaderMap) -> Trace {
        let incoming = from_w3c(h)
            .or_else(|| from_b3_single(h))
            .or_else(|| from_b3_multi(h))
            .or_else(|| from_amzn(h));
        let formats = Formats {
            b3_single: h.contains_key(&B3),
            b3_multi: h.contains_key(&B3_TRACE),
            amzn: h.contains_key(&AMZN),
        };
        let (trace_id, parent, sampled) = match incoming {
            Some((t, p, s)) => (t, p, s),
            None => (rand::random(), None, true),
        };
        Trace {
            trace_id,
            parent,
            server: span_id(),
            client: span_id(),
            sampled,
            tracestate: h
                .get("tracestate")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            start: SystemTime::now(),
            client_start: None,
            client_end: None,
            formats,
        }
    }

    /// Rewrites the outgoing request's trace headers so the next hop's
    /// spans are children of our client span. `traceparent` is always
    /// sent; B3 and AWS headers are updated when the request had them.
    pub fn inject(&self, h: &mut HeaderMap) {
        let trace = hex(&self.trace_id);
        let span = hex(&self.client);
        let flags = if self.sampled { "01" } else { "00" };
        set(h, &TRACEPARENT, format!("00-{trace}-{span}-{flags}"));
        if self.formats.b3_single {
            let sampled = if self.sampled { "1" } else { "0" };
            set(
                h,
                &B3,
                format!("{trace}-{span}-{sampled}-{}", hex(&self.server)),
            );
        }
        if self.formats.b3_multi {
            set(h, &B3_TRACE, trace.clone());
            set(h, &B3_SPAN, span.clone());
            set(h, &B3_PARENT, hex(&self.server));
            set(
                h,
                &B3_SAMPLED,
                (if self.sampled { "1" } else { "0" }).to_string(),
            );
        }
        if self.formats.amzn {
            let sampled = if self.sampled { "1" } else { "0" };
            set(
                h,
                &AMZN,
                format!(
                    "Root=1-{}-{};Parent={span};Sampled={sampled}",
                    &trace[..8],
                    &trace[8..]
                ),
            );
        }
    }
}

fn set(h: &mut HeaderMap, name: &HeaderName, v: String) {
    if let Ok(v) = HeaderValue::from_str(&v) {
        let _ = h.try_insert(name.clone(), v);
    }
}

/// A random non-zero span id (all zeros is invalid in W3C and B3).
fn span_id() -> [u8; 8] {
    let id: u64 = rand::random();
    id.max(1).to_be_bytes()
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    (out != [0u8; N]).then_some(out)
}

/// A 64-bit B3 trace id is the low half of a 128-bit one.
fn trace_id(s: &str) -> Option<[u8; 16]> {
    if s.len() == 16 {
        let low: [u8; 8] = unhex(s)?;
        let mut t = [0u8; 16];
        t[8..].copy_from_slice(&low);
        return Some(t);
    }
    unhex(s)
}

type Incoming = ([u8; 16], Option<[u8; 8]>, bool);

fn header<'a>(h: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// `00-<32 hex trace>-<16 hex parent>-<2 hex flags>`.
fn from_w3c(h: &HeaderMap) -> Option<Incoming> {
    let mut it = header(h, &TRACEPARENT)?.split('-');
    let (version, trace, parent, flags) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if version == "ff" || version.len() != 2 || flags.len() != 2 {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((unhex(trace)?, Some(unhex(parent)?), flags & 1 == 1))
}

/// `b3: <trace>-<span>[-<sampled>[-<parent>]]`, or just a sampling flag.
fn from_b3_single(h: &HeaderMap) -> Option<Incoming> {
    let mut it = header(h, &B3)?.split('-');
    let trace = trace_id(it.next()?)?;
    let span = unhex(it.next()?)?;
    let sampled = !matches!(it.next(), Some("0"));
    Some((trace, Some(span), sampled))
}

fn from_b3_multi(h: &HeaderMap) -> Option<Incoming> {
    let trace = trace_id(header(h, &B3_TRACE)?)?;
    let span = header(h, &B3_SPAN).and_then(unhex);
    let sampled = !matches!(header(h, &B3_SAMPLED), Some("0") | Some("false"));
    Some((trace, span, sampled))
}

/// `Root=1-<8 hex epoch>-<24 hex>;Parent=<16 hex>;Sampled=<0|1>`.
fn from_amzn(h: &HeaderMap) -> Option<Incoming> {
    let v = header(h, &AMZN)?;
    let mut trace = None;
    let mut parent = None;
    let mut sampled = true;
    for kv in v.split(';') {
        match kv.trim().split_once('=') {
            Some(("Root", r)) => {
                let mut parts = r.split('-');
                if parts.next()? != "1" {
                    return None;
                }
                trace = unhex::<16>(&format!("{}{}", parts.next()?, parts.next()?));
            }
            Some(("Parent", p)) => parent = unhex(p),
            Some(("Sampled", s)) => sampled = s != "0",
            _ => {}
        }
    }
    Some((trace?, parent, sampled))
}

/// Sends the request's server span and, if it went upstream, its client
/// span. Unsampled traces are propagated but not exported.
pub fn export(tracer: &otlp::Exporter, t: &Trace, info: &crate::format::StreamInfo) {
    if !t.sampled {
        return;
    }
    let end = SystemTime::now();
    let code = info.response_code.unwrap_or(0);
    let status = otlp::Status {
        message: String::new(),
        code: if code >= 500 || code == 0 { 2 } else { 0 },
    };
    let mut attributes = vec![
        otlp::int_attr("http.status_code", i64::from(code)),
        otlp::string_attr("response_flags", info.flags.to_string()),
        otlp::string_attr("peer.address", info.downstream_remote.ip().to_string()),
    ];
    if let Some(c) = &info.upstream_cluster {
        attributes.push(otlp::string_attr("upstream_cluster", c.as_ref()));
    }
    let span =
        |id: [u8; 8], parent: Option<[u8; 8]>, name: String, kind, start, end, attributes| {
            otlp::Span {
                trace_id: t.trace_id.to_vec(),
                span_id: id.to_vec(),
                trace_state: t.tracestate.clone().unwrap_or_default(),
                parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
                name,
                kind,
                start_time_unix_nano: otlp::nanos(start),
                end_time_unix_nano: otlp::nanos(end),
                attributes,
                status: Some(status.clone()),
            }
        };
    if let Some(start) = t.client_start {
        let mut client_attrs = attributes.clone();
        if let Some(h) = info.upstream_host {
            client_attrs.push(otlp::string_attr("upstream_address", h.to_string()));
        }
        let name = match &info.upstream_cluster {
            Some(c) => format!("router {c} egress"),
            None => "router egress".to_string(),
        };
        tracer.send(span(
            t.client,
            Some(t.server),
            name,
            otlp::SPAN_KIND_CLIENT,
            start,
            t.client_end.unwrap_or(end),
            client_attrs,
        ));
    }
    tracer.send(span(
        t.server,
        t.parent,
        "ingress".to_string(),
        otlp::SPAN_KIND_SERVER,
        t.start,
        end,
        attributes,
    ));
}

#[cfg(test)]
mod tests;
