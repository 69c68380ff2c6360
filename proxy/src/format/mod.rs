//! Envoy's substitution format strings (`%REQ(X-REQUEST-ID)%`,
//! `%RESPONSE_CODE%`, ...): parsed once at config time into literal and
//! operator parts, so rendering a request is a walk over the parts with no
//! parsing. Used by access logs and by route header values.

mod time;

use std::borrow::Cow;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderName};

use crate::config::ConfigError;
use crate::http::ResponseFlags;

pub use time::TimeFormat;

/// Envoy's default access log line (`AccessLogFormatUtils::DEFAULT_FORMAT`).
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// What one request (or TCP connection) has produced so far. The request
/// path fills it in as facts become known; formatters only read it.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    /// The wall-clock start when it was fixed up front (tests); otherwise
    /// [`StreamInfo::start_time`] derives it from `started`, so a request
    /// reads the wall clock only if a log line or header renders it.
    pub start: Option<SystemTime>,
    pub started: Instant,
    /// `None` for a TCP proxy connection, which has no HTTP protocol.
    pub protocol: Option<http::Version>,
    pub downstream_remote: SocketAddr,
    /// The downstream connection's id (`%CONNECTION_ID%`); 0: not known.
    pub connection_id: u64,
    pub downstream_local: Option<SocketAddr>,
    /// The verified downstream certificate's URI SAN (mTLS listeners).
    pub downstream_peer_uri_san: Option<Arc<str>>,
    /// The SNI of the downstream ClientHello, TLS terminated or passed through.
    pub requested_server_name: Option<Arc<str>>,
    pub route_name: Option<Arc<str>>,
    pub upstream_cluster: Option<Arc<str>>,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_local: Option<SocketAddr>,
    pub upstream_failure: Option<&'static str>,
    /// Tries made upstream (HTTP tries, TCP connection attempts); 0: none.
    pub upstream_attempts: u32,
    pub response_code: Option<u16>,
    pub flags: ResponseFlags,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Since `started`: the last request byte arrived.
    pub request_done: Option<Duration>,
    /// Since `started`: the first response byte came from upstream.
    pub first_upstream_byte: Option<Duration>,
    /// Since `started`: the last response byte went downstream.
    pub done: Option<Duration>,
}

/// A new downstream connection's id: unique for the process's life, as
/// Envoy's are (Envoy numbers upstream connections from the same counter,
/// so neither is dense).
pub fn next_connection_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl StreamInfo {
    pub fn new(downstream_remote: SocketAddr, downstream_local: Option<SocketAddr>) -> StreamInfo {
        StreamInfo {
            start: None,
            started: Instant::now(),
            protocol: None,
            downstream_remote,
            downstream_local,
            connection_id: 0,
            downstream_peer_uri_san: None,
            requested_server_name: None,
            route_name: None,
            upstream_cluster: None,
            upstream_host: None,
            upstream_local: None,
            upstream_failure: None,
            upstream_attempts: 0,
            response_code: None,
            flags: ResponseFlags::default(),
            bytes_received: 0,
            bytes_sent: 0,
            request_done: None,
            first_upstream_byte: None,
            done: None,
        }
    }

    pub fn start_time(&self) -> SystemTime {
        self.start.unwrap_or_else(|| {
            let now = SystemTime::now();
            now.checked_sub(self.started.elapsed()).unwrap_or(now)
        })
    }
}

/// The request as the client sent it: pseudo-headers and headers.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a http::Method,
    pub uri: &'a http::Uri,
    pub scheme: &'a str,
    pub headers: &'a HeaderMap,
}

/// Everything an operator may read. Parts that do not exist yet (the
/// response while request headers are mutated, say) are `None` and render
/// as missing.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub info: &'a StreamInfo,
    pub request: Option<RequestHead<'a>>,
    pub response: Option<&'a HeaderMap>,
    pub trailers: Option<&'a HeaderMap>,
}

impl<'a> Context<'a> {
    pub fn new(info: &'a StreamInfo) -> Context<'a> {
        Context {
            info,
            request: None,
            response: None,
            trailers: None,
        }
    }
}

/// Which header of the request a `%REQ(...)%` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HeaderKey {
    Method,
    Path,
    Authority,
    Scheme,
    Name(HeaderName),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Request,
    Response,
    Trailer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    StartTime(TimeFormat),
    Header {
        source: Source,
        main: HeaderKey,
        alt: Option<HeaderKey>,
    },
    ResponseCode,
    ResponseFlags,
    BytesReceived,
    BytesSent,
    Duration,
    RequestDuration,
    ResponseDuration,
    UpstreamHost,
    UpstreamRemote {
        port: bool,
    },
    UpstreamCluster,
    UpstreamLocalAddress,
    UpstreamTransportFailureReason,
    UpstreamRequestAttemptCount,
    DownstreamRemote {
        port: bool,
    },
    DownstreamLocal {
        port: bool,
    },
    DownstreamPeerUriSan,
    RequestedServerName,
    ConnectionId,
    Protocol,
    Hostname,
    RouteName,
    GrpcStatus(GrpcStatusName),
}

/// How `%GRPC_STATUS(X)%` names a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GrpcStatusName {
    /// `CAMEL_STRING`, the default: `Unavailable`.
    Camel,
    /// `SNAKE_STRING`: `UNAVAILABLE`.
    Snake,
    /// `NUMBER`: `14`.
    Number,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Command {
    op: Op,
    max_len: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Cmd(Command),
}

/// One operator's value for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Missing,
    Str(Cow<'a, str>),
    Num(u64),
}

/// A compiled format string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    parts: Vec<Part>,
}

impl Format {
    /// Errors carry no field path; callers add the field they parsed.
    pub fn parse(s: &str) -> Result<Format, ConfigError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('%') {
            lit.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(tail) = after.strip_prefix('%') {
                lit.push('%');
                rest = tail;
                continue;
            }
            let pos = s.len() - rest.len() + i;
            let (cmd, tail) = parse_command(after).map_err(|why| {
                ConfigError::new(
                    "",
                    format!("incorrect format string {s:?} at position {pos}: {why}"),
                )
            })?;
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            parts.push(Part::Cmd(cmd));
            rest = tail;
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Format { parts })
    }

    /// No operators: the same text for every request.
    pub fn literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Lit(s)] => Some(s),
            _ => None,
        }
    }

    /// Whether any operator reads the request's headers.
    pub fn reads_request(&self) -> bool {
        self.parts.iter().any(|p| {
            matches!(
                p,
                Part::Cmd(Command {
                    op: Op::Header {
                        source: Source::Request,
                        ..
                    },
                    ..
                })
            )
        })
    }

    /// Appends the rendering to `out`; a missing value is `-`, or nothing
    /// when `omit_empty` (Envoy's `omit_empty_values`, and header values).
    pub fn render(&self, ctx: &Context<'_>, omit_empty: bool, out: &mut String) {
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Cmd(c) => match c.value(ctx) {
                    Value::Missing => {
                        if !omit_empty {
                            out.push('-');
                        }
                    }
                    Value::Str(s) => out.push_str(&s),
                    Value::Num(n) => {
                        let _ = write!(out, "{n}");
                    }
                },
            }
        }
    }

    pub fn to_string(&self, ctx: &Context<'_>, omit_empty: bool) -> String {
        let mut s = String::new();
        self.render(ctx, omit_empty, &mut s);
        s
    }

    /// A JSON value the way Envoy's `json_format` renders one string: a lone
    /// operator keeps its type (numbers stay numbers, missing is null);
    /// anything else is a string.
    pub fn json(&self, ctx: &Context<'_>, omit_empty: bool) -> serde_json::Value {
        if let [Part::Cmd(c)] = self.parts.as_slice() {
            return match c.value(ctx) {
                Value::Missing => serde_json::Value::Null,
                Value::Str(s) => serde_json::Value::String(s.into_owned()),
                Value::Num(n) => serde_json::Value::from(n),
            };
        }
        serde_json::Value::String(self.to_string(ctx, omit_empty))
    }
}

/// `after` starts just past a `%`: `NAME`, optional `(ARG)`, optional `:LEN`,
/// then the closing `%`.
fn parse_command(after: &str) -> Result<(Command, &str), String> {
    let name_len = after
        .bytes()
        .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
        .count();
    if name_len == 0 {
        return Err("a % must start a command operator or be written %%".into());
    }
    let name = &after[..name_len];
    let mut rest = &after[name_len..];
    let mut arg = None;
    if let Some(r) = rest.strip_prefix('(') {
        let close = r.find(')').ok_or_else(|| format!("{name}: missing ')'"))?;
        arg = Some(&r[..close]);
        rest = &r[close + 1..];
    }
    let mut max_len = None;
    if let Some(r) = rest.strip_prefix(':') {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        let n = r[..digits]
            .parse::<usize>()
            .map_err(|_| format!("{name}: ':' must be followed by a length"))?;
        max_len = Some(n);
        rest = &r[digits..];
    }
    let rest = rest
        .strip_prefix('%')
        .ok_or_else(|| format!("{name}: command operator is not closed with %"))?;
    let op = operator(name, arg)?;
    Ok((Command { op, max_len }, rest))
}

fn operator(name: &str, arg: Option<&str>) -> Result<Op, String> {
    let no_arg = |op: Op| match arg {
        None => Ok(op),
        Some(_) => Err(format!("{name} takes no argument")),
    };
    let header = |source: Source| -> Result<Op, String> {
        let arg = arg.ok_or_else(|| format!("{name} needs a header name: {name}(X)"))?;
        let (main, alt) = match arg.split_once('?') {
            Some((m, a)) => (m, Some(a)),
            None => (arg, None),
        };
        if alt.is_some_and(|a| a.contains('?')) {
            return Err(format!("{name}({arg}): more than one alternative header"));
        }
        Ok(Op::Header {
            source,
            main: header_key(main)?,
            alt: alt.map(header_key).transpose()?,
        })
    };
    match name {
        "START_TIME" => Ok(Op::StartTime(
            TimeFormat::compile(arg.filter(|a| !a.is_empty()).unwrap_or(time::DEFAULT))
                .map_err(|e| e.reason)?,
        )),
        "REQ" => header(Source::Request),
        "RESP" => header(Source::Response),
        "TRAILER" => header(Source::Trailer),
        "RESPONSE_CODE" => no_arg(Op::ResponseCode),
        "RESPONSE_FLAGS" => no_arg(Op::ResponseFlags),
        "BYTES_RECEIVED" => no_arg(Op::BytesReceived),
        "BYTES_SENT" => no_arg(Op::BytesSent),
        "DURATION" => no_arg(Op::Duration),
        "REQUEST_DURATION" => no_arg(Op::RequestDuration),
        "RESPONSE_DURATION" => no_arg(Op::ResponseDuration),
        "UPSTREAM_HOST" => no_arg(Op::UpstreamHost),
        "UPSTREAM_REMOTE_ADDRESS" => no_arg(Op::UpstreamRemote { port: true }),
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => no_arg(Op::UpstreamRemote { port: false }),
        "UPSTREAM_CLUSTER" => no_arg(Op::UpstreamCluster),
        "UPSTREAM_LOCAL_ADDRESS" => no_arg(Op::UpstreamLocalAddress),
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => no_arg(Op::UpstreamTransportFailureReason),
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => no_arg(Op::UpstreamRequestAttemptCount),
        "DOWNSTREAM_REMOTE_ADDRESS" => no_arg(Op::DownstreamRemote { port: true }),
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => no_arg(Op::DownstreamRemote { port: false }),
        "DOWNSTREAM_LOCAL_ADDRESS" => no_arg(Op::DownstreamLocal { port: true }),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => no_arg(Op::DownstreamLocal { port: false }),
        "DOWNSTREAM_PEER_URI_SAN" => no_arg(Op::DownstreamPeerUriSan),
        "REQUESTED_SERVER_NAME" => no_arg(Op::RequestedServerName),
        "CONNECTION_ID" => no_arg(Op::ConnectionId),
        "PROTOCOL" => no_arg(Op::Protocol),
        "HOSTNAME" => no_arg(Op::Hostname),
        "ROUTE_NAME" => no_arg(Op::RouteName),
        "GRPC_STATUS" => Ok(Op::GrpcStatus(match arg {
            None | Some("" | "CAMEL_STRING") => GrpcStatusName::Camel,
            Some("SNAKE_STRING") => GrpcStatusName::Snake,
            Some("NUMBER") => GrpcStatusName::Number,
            Some(other) => {
                return Err(format!(
                    "GRPC_STATUS({other}): expected CAMEL_STRING, SNAKE_STRING or NUMBER"
                ))
            }
        })),
        _ => Err(format!(
            "command operator {name} is not supported by trellis"
        )),
    }
}

fn header_key(name: &str) -> Result<HeaderKey, String> {
    Ok(match name.to_ascii_lowercase().as_str() {
        ":method" => HeaderKey::Method,
        ":path" => HeaderKey::Path,
        ":authority" => HeaderKey::Authority,
        ":scheme" => HeaderKey::Scheme,
        n if n.starts_with(':') => return Err(format!("unknown pseudo-header {name}")),
        n => HeaderKey::Name(
            HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| format!("invalid header name {name:?}"))?,
        ),
    })
}

impl Command {
    fn value<'a>(&self, ctx: &Context<'a>) -> Value<'a> {
        let v = self.op.value(ctx);
        match (self.max_len, v) {
            (Some(n), Value::Str(s)) if s.len() > n => {
                let mut end = n;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                Value::Str(match s {
                    Cow::Borrowed(b) => Cow::Borrowed(&b[..end]),
                    Cow::Owned(mut o) => {
                        o.truncate(end);
                        Cow::Owned(o)
                    }
                })
            }
            (_, v) => v,
        }
    }
}

fn ms(d: Option<Duration>) -> Value<'static> {
    d.map_or(Value::Missing, |d| Value::Num(d.as_millis() as u64))
}

fn string<'a>(s: Option<String>) -> Value<'a> {
    s.map_or(Value::Missing, |s| Value::Str(Cow::Owned(s)))
}

impl Op {
    fn value<'a>(&self, ctx: &Context<'a>) -> Value<'a> {
        let i = ctx.info;
        match self {
            Op::StartTime(f) => {
                let mut s = String::with_capacity(24);
                f.render(i.start_time(), &mut s);
                Value::Str(Cow::Owned(s))
            }
            Op::Header { source, main, alt } => {
                let get = |k: &HeaderKey| lookup(ctx, source, k);
                get(main)
                    .or_else(|| alt.as_ref().and_then(get))
                    .map_or(Value::Missing, Value::Str)
            }
            Op::ResponseCode => Value::Num(u64::from(i.response_code.unwrap_or(0))),
            Op::ResponseFlags => Value::Str(Cow::Owned(i.flags.to_string())),
            Op::BytesReceived => Value::Num(i.bytes_received),
            Op::BytesSent => Value::Num(i.bytes_sent),
            Op::Duration => ms(i.done),
            Op::RequestDuration => ms(i.request_done),
            Op::ResponseDuration => ms(i.first_upstream_byte),
            Op::UpstreamHost => string(i.upstream_host.map(|a| a.to_string())),
            Op::UpstreamRemote { port } => string(i.upstream_host.map(|a| addr(a, *port))),
            Op::GrpcStatus(name) => grpc_status(ctx).map_or(Value::Missing, |code| match name {
                GrpcStatusName::Number => Value::Num(code),
                GrpcStatusName::Camel | GrpcStatusName::Snake => {
                    let named = GRPC_STATUS_NAMES.get(code as usize);
                    match (named, name) {
                        (Some((camel, _)), GrpcStatusName::Camel) => {
                            Value::Str(Cow::Borrowed(camel))
                        }
                        (Some((_, snake)), _) => Value::Str(Cow::Borrowed(snake)),
                        (None, _) => Value::Str(Cow::Owned(code.to_string())),
                    }
                }
            }),
            Op::UpstreamCluster => i
                .upstream_cluster
                .as_ref()
                .map_or(Value::Missing, |c| Value::Str(Cow::Owned(c.to_string()))),
            Op::UpstreamLocalAddress => string(i.upstream_local.map(|a| a.to_string())),
            Op::UpstreamRequestAttemptCount => Value::Num(u64::from(i.upstream_attempts)),
            Op::UpstreamTransportFailureReason => i
                .upstream_failure
                .map_or(Value::Missing, |r| Value::Str(Cow::Borrowed(r))),
            Op::DownstreamRemote { port } => {
                Value::Str(Cow::Owned(addr(i.downstream_remote, *port)))
            }
            Op::DownstreamLocal { port } => string(i.downstream_local.map(|a| addr(a, *port))),
            Op::DownstreamPeerUriSan => i
                .downstream_peer_uri_san
                .as_deref()
                .map_or(Value::Missing, |s| Value::Str(Cow::Borrowed(s))),
            Op::ConnectionId => Value::Num(i.connection_id),
            Op::RequestedServerName => i
                .requested_server_name
                .as_deref()
                .map_or(Value::Missing, |s| Value::Str(Cow::Borrowed(s))),
            Op::Protocol => match i.protocol {
                Some(http::Version::HTTP_10) => Value::Str(Cow::Borrowed("HTTP/1.0")),
                Some(http::Version::HTTP_11) => Value::Str(Cow::Borrowed("HTTP/1.1")),
                Some(http::Version::HTTP_2) => Value::Str(Cow::Borrowed("HTTP/2")),
                Some(http::Version::HTTP_3) => Value::Str(Cow::Borrowed("HTTP/3")),
                _ => Value::Missing,
            },
            Op::Hostname => hostname().map_or(Value::Missing, |h| Value::Str(Cow::Borrowed(h))),
            Op::RouteName => i
                .route_name
                .as_ref()
                .filter(|n| !n.is_empty())
                .map_or(Value::Missing, |n| Value::Str(Cow::Owned(n.to_string()))),
        }
    }
}

/// gRPC's status names by code, as Envoy prints them (camel, snake).
const GRPC_STATUS_NAMES: [(&str, &str); 17] = [
    ("OK", "OK"),
    ("Canceled", "CANCELLED"),
    ("Unknown", "UNKNOWN"),
    ("InvalidArgument", "INVALID_ARGUMENT"),
    ("DeadlineExceeded", "DEADLINE_EXCEEDED"),
    ("NotFound", "NOT_FOUND"),
    ("AlreadyExists", "ALREADY_EXISTS"),
    ("PermissionDenied", "PERMISSION_DENIED"),
    ("ResourceExhausted", "RESOURCE_EXHAUSTED"),
    ("FailedPrecondition", "FAILED_PRECONDITION"),
    ("Aborted", "ABORTED"),
    ("OutOfRange", "OUT_OF_RANGE"),
    ("Unimplemented", "UNIMPLEMENTED"),
    ("Internal", "INTERNAL"),
    ("Unavailable", "UNAVAILABLE"),
    ("DataLoss", "DATA_LOSS"),
    ("Unauthenticated", "UNAUTHENTICATED"),
];

/// The response's gRPC status as Envoy finds it, for gRPC requests only
/// (a POST with a gRPC content type): `grpc-status` in the trailers, else
/// in the headers, else inferred from the HTTP status.
fn grpc_status(ctx: &Context<'_>) -> Option<u64> {
    let request = ctx.request?;
    let content_type = request
        .headers
        .get(http::header::CONTENT_TYPE)?
        .to_str()
        .ok()?;
    let grpc = content_type
        .strip_prefix("application/grpc")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']));
    if !grpc || request.method != http::Method::POST {
        return None;
    }
    let header = |map: Option<&HeaderMap>| {
        map?.get("grpc-status")?
            .to_str()
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
    };
    if let Some(code) = header(ctx.trailers).or_else(|| header(ctx.response)) {
        return Some(code);
    }
    // Envoy's `httpToGrpcStatus`.
    Some(match ctx.info.response_code.filter(|c| *c != 0)? {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    })
}

/// Envoy prints addresses without brackets only when the port is dropped.
fn addr(a: SocketAddr, port: bool) -> String {
    if port {
        a.to_string()
    } else {
        a.ip().to_string()
    }
}

fn lookup<'a>(ctx: &Context<'a>, source: &Source, key: &HeaderKey) -> Option<Cow<'a, str>> {
    let map = match source {
        Source::Request => {
            let r = ctx.request?;
            match key {
                HeaderKey::Method => return Some(Cow::Borrowed(r.method.as_str())),
                HeaderKey::Path => {
                    return r.uri.path_and_query().map(|p| Cow::Borrowed(p.as_str()))
                }
                HeaderKey::Authority => {
                    return r
                        .uri
                        .authority()
                        .map(|a| Cow::Borrowed(a.as_str()))
                        .or_else(|| header_str(r.headers, &http::header::HOST))
                }
                HeaderKey::Scheme => return Some(Cow::Borrowed(r.scheme)),
                HeaderKey::Name(n) => return header_str(r.headers, n),
            }
        }
        Source::Response => ctx.response?,
        Source::Trailer => ctx.trailers?,
    };
    match key {
        HeaderKey::Name(n) => header_str(map, n),
        _ => None,
    }
}

fn header_str<'a>(map: &'a HeaderMap, name: &HeaderName) -> Option<Cow<'a, str>> {
    map.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()))
}

/// Read once: the host name does not change under a running proxy, and
/// reading `/proc` per request would be a syscall on the hot path.
fn hostname() -> Option<&'static str> {
    static NAME: OnceLock<Option<String>> = OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    })
    .as_deref()
}

#[cfg(test)]
mod tests;
