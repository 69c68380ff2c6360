//! Sending a routed request upstream: endpoint choice, connection checkout,
//! per-try timeouts, retries with back-off, and the response flags of each way
//! it can fail.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;

use super::flags::ResponseFlags;
use super::local_reply::{self, reply};
use super::retry::RetryRules;
use crate::body::{self, Body};
use crate::router::RetryPolicy;
use crate::upstream::{Cluster, ConnectError, Endpoint, OriginalDestination, TryResult};

/// Bodies up to this size are kept so a retry can replay them; larger ones
/// stream and are not retried once sent, as with Envoy's buffer limit.
const RETRY_BUFFER_LIMIT: u64 = 64 * 1024;

pub struct Outcome {
    pub response: Response<Body>,
    pub flags: ResponseFlags,
    pub upstream: Option<Arc<Endpoint>>,
    /// The local address of the connection the last try used.
    pub upstream_local: Option<std::net::SocketAddr>,
    /// Tries made, for `x-envoy-attempt-count` on the response.
    pub attempts: u32,
    /// When the last try ended, if one was made.
    pub answered: Option<Instant>,
    /// The response is the upstream's, not a local reply (with `URX` set,
    /// too: the last retriable answer is passed on).
    pub via_upstream: bool,
}

/// The request body: replayable bytes, or a stream that can be sent once.
enum ReqBody {
    Replay(Bytes),
    Stream(Option<Body>),
}

/// The downstream sent a body its codec could not read (a bad chunk, say).
struct MalformedBody;

impl ReqBody {
    /// `peek`: wait for the first body frame before anything goes upstream, so
    /// a malformed HTTP/1.1 chunked body is refused with a 400 instead of
    /// reaching the upstream as a truncated request.
    async fn new(mut b: Body, retry: bool, peek: bool) -> Result<ReqBody, MalformedBody> {
        if b.is_end_stream() {
            return Ok(ReqBody::Replay(Bytes::new()));
        }
        let small = b
            .size_hint()
            .upper()
            .is_some_and(|n| n <= RETRY_BUFFER_LIMIT);
        if retry && small {
            return match b.collect().await {
                Ok(c) => Ok(ReqBody::Replay(c.to_bytes())),
                Err(_) => Err(MalformedBody),
            };
        }
        if peek {
            let first = match b.frame().await {
                None => return Ok(ReqBody::Replay(Bytes::new())),
                Some(Err(_)) => return Err(MalformedBody),
                Some(Ok(f)) => f,
            };
            let rest = http_body_util::BodyStream::new(b);
            let frames = futures::stream::once(async move { Ok(first) }).chain(rest);
            return Ok(ReqBody::Stream(Some(
                http_body_util::StreamBody::new(frames).boxed_unsync(),
            )));
        }
        Ok(ReqBody::Stream(Some(b)))
    }

    fn take(&mut self) -> Option<Body> {
        match self {
            ReqBody::Replay(b) if b.is_empty() => Some(body::empty()),
            ReqBody::Replay(b) => Some(body::full(b.clone())),
            ReqBody::Stream(s) => s.take(),
        }
    }

    fn replayable(&self) -> bool {
        !matches!(self, ReqBody::Stream(None))
    }
}

enum TryError {
    Connect,
    /// No connection within the cluster's `connect_timeout`.
    ConnectTimeout,
    Reset,
    PerTryTimeout,
    /// A circuit breaker (connections plus pending requests) refused the try.
    Overflow,
}

impl TryError {
    /// The response flag a failed try is known by, for its span.
    fn flag(&self) -> ResponseFlags {
        match self {
            TryError::Connect | TryError::ConnectTimeout => {
                ResponseFlags::UPSTREAM_CONNECTION_FAILURE
            }
            TryError::Reset => ResponseFlags::UPSTREAM_REMOTE_RESET,
            TryError::PerTryTimeout => ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
            TryError::Overflow => ResponseFlags::UPSTREAM_OVERFLOW,
        }
    }
}

/// How one request is to be tried upstream.
pub struct Attempt<'a> {
    pub retry: Option<&'a RetryPolicy>,
    pub timeout: Option<Duration>,
    pub grpc: bool,
    /// `auto_host_rewrite`: the chosen endpoint's DNS name becomes the host.
    pub auto_host: bool,
    /// The downstream body is HTTP/1.1 chunked: read its first frame first.
    pub peek_body: bool,
    /// The stream's maximum duration (`max_stream_duration`, `grpc-timeout`).
    pub max_duration: Option<Duration>,
    /// The route's hash-policy value, for RING_HASH and MAGLEV clusters.
    pub hash: Option<u64>,
    /// `include_request_attempt_count`: tell the upstream which try this is.
    pub request_attempt_count: bool,
    /// The request's trace: each try gets a client span of its own.
    pub trace: Option<&'a mut crate::tracing_ctx::Trace>,
    /// When the request reached the router: a bodiless request's deadlines
    /// and first try count from here, so the path reads the clock once less.
    pub started: Instant,
}

/// Sends the request upstream, with its tries. A plain function around an
/// `async` block, which holds the request once: an `async fn` would keep its
/// arguments and their moved-to locals side by side.
pub fn forward<'a>(
    cluster: &'a Arc<Cluster>,
    parts: http::request::Parts,
    body: Body,
    a: Attempt<'a>,
) -> impl Future<Output = Outcome> + 'a {
    let proto = cluster.protocol(parts.version);
    let destination = parts.extensions.get::<OriginalDestination>().copied();
    let mut parts = Some(parts);
    let Attempt {
        retry,
        timeout,
        grpc,
        auto_host,
        peek_body,
        max_duration,
        hash,
        request_attempt_count,
        mut trace,
        started,
    } = a;
    async move {
        let stats = &cluster.stats;
        let retries = retry.is_some_and(|r| r.num_retries > 0);
        let bodiless = body.is_end_stream();
        let mut body = match ReqBody::new(body, retries, peek_body).await {
            Ok(b) => b,
            Err(MalformedBody) => {
                let mut flags = ResponseFlags::default();
                flags.set(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR);
                let mut response = reply(StatusCode::BAD_REQUEST, "", grpc);
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
                return Outcome {
                    response,
                    flags,
                    upstream: None,
                    upstream_local: None,
                    attempts: 0,
                    answered: None,
                    via_upstream: false,
                };
            }
        };
        // `max_requests`: held for as long as the request is upstream.
        let Some(_request_slot) = cluster.breaker.request() else {
            cluster.rstats.upstream_rq_active_overflow.inc();
            return overflow(grpc, 0);
        };
        // The retry being made holds a `max_retries` (or budget) slot.
        let mut held_retry = None;
        let max_attempts = 1 + retry.map_or(0, |r| r.num_retries);
        // Timeouts count from the end of the request, as Envoy's do: a body may
        // have been read in full above.
        let now = if bodiless { started } else { Instant::now() };
        let duration_deadline = max_duration.map(|d| now + d);
        let deadline = match (timeout.map(|t| now + t), duration_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut flags = ResponseFlags::default();
        let mut last_failed: Option<Arc<Endpoint>> = None;
        let mut attempt = 0;
        // Clock reads are shared where one will do: each costs on the hot path.
        let mut attempt_started = now;
        let mut upstream_local = None;

        loop {
            attempt += 1;
            let Some(endpoint) = pick(
                cluster,
                destination,
                last_failed.as_ref(),
                hash,
                retry.map_or(0, |r| r.host_selection_attempts),
            ) else {
                flags.set(ResponseFlags::NO_HEALTHY_UPSTREAM);
                return Outcome {
                    response: reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        local_reply::NO_HEALTHY_UPSTREAM,
                        grpc,
                    ),
                    flags,
                    upstream: None,
                    upstream_local: None,
                    attempts: attempt,
                    answered: None,
                    via_upstream: false,
                };
            };
            stats.upstream_rq_total.inc();
            stats.upstream_rq_active.inc();
            let _active = endpoint.track();
            if attempt > 1 {
                attempt_started = Instant::now();
            }
            let per_try = retry.and_then(|r| r.per_try_timeout);
            let limit = match (per_try.map(|p| attempt_started + p), deadline) {
                (Some(p), Some(d)) => Some(p.min(d)),
                (a, b) => a.or(b),
            };
            // The last possible attempt takes the head; earlier ones copy it.
            let mut head = if attempt >= max_attempts {
                parts.take()
            } else {
                parts.as_ref().map(clone_parts)
            };
            if let (Some(t), Some(h)) = (trace.as_deref_mut(), head.as_mut()) {
                t.begin_attempt(&mut h.headers);
            }
            let count = request_attempt_count.then_some(attempt);
            let result = attempt_once(
                cluster,
                &endpoint,
                proto,
                &mut head,
                &mut body,
                limit,
                auto_host,
                count,
                &mut upstream_local,
            )
            .await;
            stats.upstream_rq_active.dec();
            if let Some(t) = trace.as_deref_mut() {
                let (status, failure) = match &result {
                    Ok(r) => (Some(r.status().as_u16()), ResponseFlags::default()),
                    Err(e) => (None, e.flag()),
                };
                t.end_attempt(Some(endpoint.addr), status, failure);
            }
            // The retry is over: its slot is free for the next one.
            drop(held_retry.take());
            match &result {
                Ok(r) => cluster.report(&endpoint, TryResult::Status(r.status().as_u16())),
                Err(TryError::Overflow) => {}
                Err(_) => cluster.report(&endpoint, TryResult::LocalFailure),
            }

            let ended = Instant::now();
            let overall_expired = deadline.is_some_and(|d| ended >= d);
            let retries_left = attempt < max_attempts && body.replayable() && !overall_expired;
            // Whether the policy retries this try's outcome, and the answer
            // to return when it is not retried.
            let (retriable, answer) = match result {
                Ok(resp) => {
                    let again = retry.is_some_and(|r| {
                        r.retriable_response(resp.status().as_u16(), grpc_status(&resp))
                    });
                    (again, Ok(resp))
                }
                Err(e) => {
                    let (flag, status, text, retriable) = match e {
                        TryError::Connect => (
                            ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
                            StatusCode::SERVICE_UNAVAILABLE,
                            local_reply::CONNECT_FAILURE,
                            retry.is_some_and(RetryPolicy::retriable_connect_failure),
                        ),
                        TryError::ConnectTimeout => (
                            ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
                            StatusCode::SERVICE_UNAVAILABLE,
                            local_reply::CONNECT_TIMEOUT,
                            retry.is_some_and(RetryPolicy::retriable_connect_failure),
                        ),
                        TryError::Reset => (
                            ResponseFlags::UPSTREAM_REMOTE_RESET,
                            StatusCode::SERVICE_UNAVAILABLE,
                            local_reply::RESET_BEFORE_HEADERS,
                            retry.is_some_and(RetryPolicy::retriable_reset),
                        ),
                        TryError::PerTryTimeout
                            if duration_deadline.is_some_and(|d| ended >= d) =>
                        {
                            flags.set(ResponseFlags::DURATION_TIMEOUT);
                            return Outcome {
                                response: local_reply::duration_timeout(grpc),
                                flags,
                                upstream: Some(endpoint),
                                upstream_local,
                                attempts: attempt,
                                answered: Some(ended),
                                via_upstream: false,
                            };
                        }
                        TryError::PerTryTimeout if overall_expired || per_try.is_none() => {
                            stats.upstream_rq_timeout.inc();
                            (
                                ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
                                StatusCode::GATEWAY_TIMEOUT,
                                local_reply::UPSTREAM_TIMEOUT,
                                false,
                            )
                        }
                        TryError::Overflow => return overflow(grpc, attempt),
                        TryError::PerTryTimeout => {
                            stats.upstream_rq_per_try_timeout.inc();
                            (
                                ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
                                StatusCode::GATEWAY_TIMEOUT,
                                local_reply::UPSTREAM_TIMEOUT,
                                retry.is_some_and(RetryPolicy::retriable_timeout),
                            )
                        }
                    };
                    (retriable, Err((flag, status, text)))
                }
            };
            // A retry needs a slot under the cluster's retry breaker.
            if retriable && retries_left {
                if let Some(slot) = cluster.breaker.retry() {
                    held_retry = Some(slot);
                    last_failed = Some(endpoint);
                    backoff(retry, attempt, deadline).await;
                    stats.upstream_rq_retry.inc();
                    continue;
                }
                cluster.rstats.upstream_rq_retry_overflow.inc();
            }
            match answer {
                Ok(resp) => {
                    let status = resp.status();
                    // Envoy charges the code and time of the answer it returns
                    // only, not of the tries it retried (verified with 1.40).
                    stats.upstream_rq.record(status.as_u16());
                    stats.upstream_rq_time.record(ended - attempt_started);
                    if retriable {
                        flags.set(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
                        if attempt >= max_attempts {
                            cluster.rstats.upstream_rq_retry_limit_exceeded.inc();
                        }
                    }
                    if attempt > 1 && !retriable {
                        stats.upstream_rq_retry_success.inc();
                    }
                    return Outcome {
                        response: resp,
                        flags,
                        upstream: Some(endpoint),
                        upstream_local,
                        attempts: attempt,
                        answered: Some(ended),
                        via_upstream: true,
                    };
                }
                Err((flag, status, text)) => {
                    flags.set(flag);
                    if retriable && attempt > 1 {
                        flags.set(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
                    }
                    if retriable && attempt >= max_attempts && max_attempts > 1 {
                        cluster.rstats.upstream_rq_retry_limit_exceeded.inc();
                    }
                    stats.upstream_rq.record(status.as_u16());
                    return Outcome {
                        response: reply(status, text, grpc),
                        flags,
                        upstream: Some(endpoint),
                        upstream_local,
                        attempts: attempt,
                        answered: Some(ended),
                        via_upstream: false,
                    };
                }
            }
        }
    }
}

/// A circuit breaker refused the request: 503 with `UO`, as Envoy answers.
fn overflow(grpc: bool, attempts: u32) -> Outcome {
    let mut flags = ResponseFlags::default();
    flags.set(ResponseFlags::UPSTREAM_OVERFLOW);
    let mut response = reply(StatusCode::SERVICE_UNAVAILABLE, local_reply::OVERFLOW, grpc);
    response.headers_mut().insert(
        http::HeaderName::from_static("x-envoy-overloaded"),
        http::HeaderValue::from_static("true"),
    );
    Outcome {
        response,
        flags,
        upstream: None,
        upstream_local: None,
        attempts,
        answered: None,
        via_upstream: false,
    }
}

/// A retry prefers an endpoint other than the one that just failed (with a
/// hash policy too: Envoy's `previous_hosts` retry predicate steps off the
/// key's host). The balancer re-draws up to `attempts` times, as Envoy's
/// `host_selection_retry_max_attempts`; if it keeps landing on the failed
/// host, any other eligible host is taken, so a retry never returns to it
/// while another is there.
fn pick(
    cluster: &Cluster,
    destination: Option<OriginalDestination>,
    avoid: Option<&Arc<Endpoint>>,
    hash: Option<u64>,
    attempts: u32,
) -> Option<Arc<Endpoint>> {
    if cluster.is_original_dst() {
        // One host per destination: nothing to balance or step off.
        return cluster.pick_for(destination, 0);
    }
    let first = cluster.pick_hashed(crate::rng::random(), hash)?;
    match avoid {
        Some(bad) if Arc::ptr_eq(bad, &first) => {
            for _ in 0..attempts {
                if let Some(other) = cluster.pick(crate::rng::random()) {
                    if !Arc::ptr_eq(bad, &other) {
                        return Some(other);
                    }
                }
            }
            cluster
                .endpoints()
                .other_than(bad, crate::rng::random())
                .cloned()
                .or(Some(first))
        }
        _ => Some(first),
    }
}

#[allow(clippy::too_many_arguments)]
async fn attempt_once(
    cluster: &Cluster,
    endpoint: &Arc<Endpoint>,
    proto: crate::upstream::Protocol,
    head: &mut Option<http::request::Parts>,
    body: &mut ReqBody,
    limit: Option<Instant>,
    auto_host: bool,
    attempt_count: Option<u32>,
    local: &mut Option<std::net::SocketAddr>,
) -> Result<Response<Body>, TryError> {
    // Pinned in place: the timeout then wraps a reference, and the try is
    // held once in this future rather than again inside the timeout.
    let work = std::pin::pin!(async {
        let conn = match endpoint.ready_now(proto) {
            Some(conn) => conn,
            // Boxed: waiting for a connection, or opening one, is the rare
            // path, and its future would sit in every request's.
            None => Box::pin(endpoint.checkout(proto, &cluster.connect_params()))
                .await
                .map_err(|e| match e {
                    ConnectError::Overflow => TryError::Overflow,
                    ConnectError::Timeout => TryError::ConnectTimeout,
                    _ => TryError::Connect,
                })?,
        };
        *local = conn.local_addr();
        // The request is built in a block that ends before the await, so the
        // future holds the send alone, not the moved-from request beside it.
        {
            let (Some(b), Some(head)) = (body.take(), head.take()) else {
                return Err(TryError::Reset);
            };
            let mut req = Request::from_parts(head, b);
            if let Some(n) = attempt_count {
                req.headers_mut()
                    .insert(super::headers::X_ENVOY_ATTEMPT_COUNT.clone(), n.into());
            }
            if auto_host {
                if let Some(name) = &endpoint.hostname {
                    rewrite_host(&mut req, name);
                }
            }
            *req.version_mut() = match proto {
                crate::upstream::Protocol::Http1 => http::Version::HTTP_11,
                crate::upstream::Protocol::Http2 => http::Version::HTTP_2,
            };
            conn.send(req)
        }
        .await
        .map_err(|_| TryError::Reset)
    });
    match limit {
        Some(l) => tokio::time::timeout_at(tokio::time::Instant::from_std(l), work)
            .await
            .unwrap_or(Err(TryError::PerTryTimeout)),
        None => work.await,
    }
}

/// Sets the host an HTTP/1.1 upstream reads from `Host` and an HTTP/2
/// upstream from `:authority`.
fn rewrite_host(req: &mut Request<Body>, host: &str) {
    let original = match req.uri().authority() {
        Some(a) => Some(a.as_str().to_string()),
        None => req
            .headers()
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    if let Some(v) = original.and_then(|o| http::HeaderValue::from_str(&o).ok()) {
        req.headers_mut()
            .insert(super::headers::X_ENVOY_ORIGINAL_HOST.clone(), v);
    }
    if req.uri().authority().is_some() {
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        if let Ok(uri) = http::Uri::try_from(format!("http://{host}{pq}")) {
            *req.uri_mut() = uri;
        }
    } else if let Ok(v) = http::HeaderValue::from_str(host) {
        req.headers_mut().insert(http::header::HOST, v);
    }
}

fn clone_parts(p: &http::request::Parts) -> http::request::Parts {
    let mut req = Request::new(());
    *req.method_mut() = p.method.clone();
    *req.uri_mut() = p.uri.clone();
    *req.version_mut() = p.version;
    *req.headers_mut() = p.headers.clone();
    req.into_parts().0
}

/// gRPC servers put `grpc-status` in the headers of a trailers-only response.
fn grpc_status(resp: &Response<Body>) -> Option<u32> {
    resp.headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

async fn backoff(retry: Option<&RetryPolicy>, attempt: u32, deadline: Option<Instant>) {
    let Some(r) = retry else { return };
    let mut wait = r.backoff(attempt, crate::rng::random());
    if let Some(d) = deadline {
        wait = wait.min(d.saturating_duration_since(Instant::now()));
    }
    tokio::time::sleep(wait).await;
}
