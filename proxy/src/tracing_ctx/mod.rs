//! Distributed tracing: the trace context a request arrives with (W3C
//! `traceparent`/`tracestate`, B3 multi and single header, AWS
//! `X-Amzn-Trace-Id`), a server span per request and a client span per
//! upstream attempt (so retries show), the context re-injected into each
//! attempt so the next hop's spans are children of it, and spans exported
//! over OTLP by [`otlp::Exporter`].

mod config;
pub mod otlp;

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};

pub use config::{ExportTarget, Sampling, TracingConfig, Transport};

use crate::http::ResponseFlags;

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static B3: HeaderName = HeaderName::from_static("b3");
static B3_TRACE: HeaderName = HeaderName::from_static("x-b3-traceid");
static B3_SPAN: HeaderName = HeaderName::from_static("x-b3-spanid");
static B3_PARENT: HeaderName = HeaderName::from_static("x-b3-parentspanid");
static B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
static AMZN: HeaderName = HeaderName::from_static("x-amzn-trace-id");
static CLIENT_TRACE_ID: HeaderName = HeaderName::from_static("x-client-trace-id");

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
    pub sampled: bool,
    pub tracestate: Option<String>,
    pub start: SystemTime,
    /// The request as received, for the span's name and attributes; kept
    /// only when the trace is sampled.
    request: Option<RequestFacts>,
    /// One client span per upstream attempt, in order (sampled traces only).
    pub attempts: Vec<ClientSpan>,
    /// The span id the last attempt was sent with, sampled or not.
    last_client: Option<[u8; 8]>,
    formats: Formats,
}

#[derive(Debug, Clone)]
struct RequestFacts {
    method: http::Method,
    /// `scheme://host/path?query`, Envoy's `http.url` tag.
    url: String,
}

/// One try upstream.
#[derive(Debug, Clone)]
pub struct ClientSpan {
    pub id: [u8; 8],
    pub start: SystemTime,
    pub end: Option<SystemTime>,
    pub upstream: Option<SocketAddr>,
    /// The try's response status, if one came back.
    pub status: Option<u16>,
    /// Why the try failed, when it did (`UF`, `UT`, `UR`, `UO`).
    pub failure: ResponseFlags,
}

impl Trace {
    /// Continues the trace the headers carry, or starts one; a request
    /// without a sampling decision gets one from `sampling`.
    pub fn start(parts: &http::request::Parts, scheme: &str, sampling: &Sampling) -> Trace {
        let h = &parts.headers;
        let incoming = from_w3c(h)
            .or_else(|| from_b3_single(h))
            .or_else(|| from_b3_multi(h))
            .or_else(|| from_amzn(h));
        let formats = Formats {
            b3_single: h.contains_key(&B3),
            b3_multi: h.contains_key(&B3_TRACE),
            amzn: h.contains_key(&AMZN),
        };
        let (trace_id, parent, decision) = match incoming {
            Some((t, p, s)) => (t, p, s),
            None => (crate::rng::random(), None, None),
        };
        let sampled = decision.unwrap_or_else(|| {
            sampling.decide(
                h.contains_key(&CLIENT_TRACE_ID),
                crate::rng::random::<f64>(),
            )
        });
        Trace {
            trace_id,
            parent,
            server: span_id(),
            sampled,
            tracestate: h
                .get("tracestate")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            start: SystemTime::now(),
            request: sampled.then(|| {
                let host = match parts.uri.authority() {
                    Some(a) => a.as_str(),
                    None => h
                        .get(http::header::HOST)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default(),
                };
                let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                RequestFacts {
                    method: parts.method.clone(),
                    url: format!("{scheme}://{host}{pq}"),
                }
            }),
            attempts: Vec::new(),
            last_client: None,
            formats,
        }
    }

    /// Starts the client span of one upstream attempt and writes its
    /// context into the attempt's headers, so the next hop's server span
    /// is its child. `traceparent` is always sent; B3 and AWS headers are
    /// updated when the request had them.
    pub fn begin_attempt(&mut self, h: &mut HeaderMap) {
        let client = span_id();
        self.last_client = Some(client);
        self.inject(h, client);
        if self.sampled {
            self.attempts.push(ClientSpan {
                id: client,
                start: SystemTime::now(),
                end: None,
                upstream: None,
                status: None,
                failure: ResponseFlags::default(),
            });
        }
    }

    /// Ends the current attempt's span.
    pub fn end_attempt(
        &mut self,
        upstream: Option<SocketAddr>,
        status: Option<u16>,
        failure: ResponseFlags,
    ) {
        if let Some(a) = self.attempts.last_mut().filter(|a| a.end.is_none()) {
            a.end = Some(SystemTime::now());
            a.upstream = upstream;
            a.status = status;
            a.failure = failure;
        }
    }

    /// The span id the last attempt carried upstream.
    pub fn last_client(&self) -> Option<[u8; 8]> {
        self.last_client
    }

    fn inject(&self, h: &mut HeaderMap, client: [u8; 8]) {
        let trace = hex(&self.trace_id);
        let span = hex(&client);
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
    let id: u64 = crate::rng::random();
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

/// Trace id, parent span, and the caller's sampling decision if it made one.
type Incoming = ([u8; 16], Option<[u8; 8]>, Option<bool>);

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
    Some((unhex(trace)?, Some(unhex(parent)?), Some(flags & 1 == 1)))
}

/// `b3: <trace>-<span>[-<sampled>[-<parent>]]`; `d` (debug) counts as
/// sampled, a missing field leaves the decision to us.
fn from_b3_single(h: &HeaderMap) -> Option<Incoming> {
    let mut it = header(h, &B3)?.split('-');
    let trace = trace_id(it.next()?)?;
    let span = unhex(it.next()?)?;
    let sampled = match it.next() {
        Some("0") => Some(false),
        Some("1") | Some("d") => Some(true),
        _ => None,
    };
    Some((trace, Some(span), sampled))
}

fn from_b3_multi(h: &HeaderMap) -> Option<Incoming> {
    let trace = trace_id(header(h, &B3_TRACE)?)?;
    let span = header(h, &B3_SPAN).and_then(unhex);
    let sampled = match header(h, &B3_SAMPLED) {
        Some("0") | Some("false") => Some(false),
        Some("1") | Some("true") => Some(true),
        _ => None,
    };
    Some((trace, span, sampled))
}

/// `Root=1-<8 hex epoch>-<24 hex>;Parent=<16 hex>;Sampled=<0|1>`.
fn from_amzn(h: &HeaderMap) -> Option<Incoming> {
    let v = header(h, &AMZN)?;
    let mut trace = None;
    let mut parent = None;
    let mut sampled = None;
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
            Some(("Sampled", "0")) => sampled = Some(false),
            Some(("Sampled", "1")) => sampled = Some(true),
            _ => {}
        }
    }
    Some((trace?, parent, sampled))
}

/// Sends the request's server span and one client span per upstream
/// attempt. Unsampled traces are propagated but not exported.
pub fn export(tracer: &otlp::Exporter, t: &Trace, info: &crate::format::StreamInfo) {
    if !t.sampled {
        return;
    }
    let end = SystemTime::now();
    let code = info.response_code.unwrap_or(0);
    let mut common = vec![
        otlp::string_attr("component", "proxy"),
        otlp::string_attr("node_id", tracer.node_id()),
    ];
    if let Some(r) = &t.request {
        common.push(otlp::string_attr("http.method", r.method.as_str()));
        common.push(otlp::string_attr("http.url", r.url.as_str()));
    }
    if let Some(c) = &info.upstream_cluster {
        common.push(otlp::string_attr("upstream_cluster", c.as_ref()));
    }
    let span = |id: [u8; 8], parent: Option<[u8; 8]>, name: String, kind, start, end| otlp::Span {
        trace_id: t.trace_id.to_vec(),
        span_id: id.to_vec(),
        trace_state: t.tracestate.clone().unwrap_or_default(),
        parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
        name,
        kind,
        start_time_unix_nano: otlp::nanos(start),
        end_time_unix_nano: otlp::nanos(end),
        attributes: common.clone(),
        status: None,
    };
    let client_name = match &info.upstream_cluster {
        Some(c) => format!("router {c} egress"),
        None => "router egress".to_string(),
    };
    for (n, a) in t.attempts.iter().enumerate() {
        let mut s = span(
            a.id,
            Some(t.server),
            client_name.clone(),
            otlp::SPAN_KIND_CLIENT,
            a.start,
            a.end.unwrap_or(end),
        );
        s.attributes
            .push(otlp::int_attr("upstream.attempt", n as i64 + 1));
        if let Some(h) = a.upstream {
            s.attributes
                .push(otlp::string_attr("upstream_address", h.to_string()));
        }
        if let Some(code) = a.status {
            s.attributes
                .push(otlp::int_attr("http.status_code", i64::from(code)));
        }
        s.attributes
            .push(otlp::string_attr("response_flags", a.failure.to_string()));
        s.status = Some(status(a.status.unwrap_or(0), !a.failure.is_empty()));
        tracer.send(s);
    }
    let mut s = span(
        t.server,
        t.parent,
        "ingress".to_string(),
        otlp::SPAN_KIND_SERVER,
        t.start,
        end,
    );
    s.attributes.extend([
        otlp::int_attr("http.status_code", i64::from(code)),
        otlp::string_attr("response_flags", info.flags.to_string()),
        otlp::string_attr("peer.address", info.downstream_remote.ip().to_string()),
    ]);
    if let Some(p) = info.protocol {
        s.attributes
            .push(otlp::string_attr("http.protocol", format!("{p:?}")));
    }
    if let Some(r) = &info.route_name {
        s.attributes
            .push(otlp::string_attr("route_name", r.as_ref()));
    }
    if let Some(id) = &info.downstream_peer_uri_san {
        s.attributes
            .push(otlp::string_attr("peer.identity", id.as_ref()));
    }
    if let Some(h) = info.upstream_host {
        s.attributes
            .push(otlp::string_attr("upstream_address", h.to_string()));
    }
    s.status = Some(status(code, false));
    tracer.send(s);
}

/// OTLP's error status for 5xx answers and failed tries, else unset.
fn status(code: u16, failed: bool) -> otlp::Status {
    otlp::Status {
        message: String::new(),
        code: if failed || code >= 500 || code == 0 {
            2
        } else {
            0
        },
    }
}

#[cfg(test)]
mod tests;
