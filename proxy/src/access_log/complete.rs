//! The end of a request: the response body is wrapped so that when its last
//! frame leaves (or the client goes away) the request's duration is
//! recorded and its access log lines are written, with the byte counts and
//! trailers the body carried.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;

use super::AccessLogs;
use crate::body::{Body, BoxError};
use crate::format::{Context, RequestHead, StreamInfo};

/// The request as received, kept only when an access log needs it.
#[derive(Debug)]
pub struct SavedRequest {
    pub method: http::Method,
    pub uri: http::Uri,
    pub scheme: &'static str,
    pub headers: HeaderMap,
}

impl SavedRequest {
    pub fn new(parts: &http::request::Parts, scheme: &'static str) -> SavedRequest {
        SavedRequest {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            scheme,
            headers: parts.headers.clone(),
        }
    }

    fn head(&self) -> RequestHead<'_> {
        RequestHead {
            method: &self.method,
            uri: &self.uri,
            scheme: self.scheme,
            headers: &self.headers,
        }
    }
}

/// One request's facts on their way to the access log and to header
/// values: what it has produced so far, and the request as sent upstream
/// when something will read it after the request has gone.
#[derive(Debug)]
pub struct Record {
    pub info: StreamInfo,
    pub saved: Option<SavedRequest>,
    /// Set when the connection manager traces.
    pub trace: Option<crate::tracing_ctx::Trace>,
    /// The stream idle timeout that watches the response body, when it
    /// streams.
    pub response_idle: Option<std::time::Duration>,
}

impl Record {
    /// A context for response-time formatting.
    pub fn ctx(&self) -> Context<'_> {
        Context {
            info: &self.info,
            request: self.saved.as_ref().map(SavedRequest::head),
            response: None,
            trailers: None,
        }
    }
}

/// Request body bytes and the time the last one arrived, written by the
/// request body as it streams upstream and read when the response ends.
#[derive(Debug, Default)]
pub struct RequestTally {
    bytes: AtomicU64,
    /// Microseconds since the request started, plus one; zero while open.
    done_us: AtomicU64,
}

/// Counts the request body into `tally`.
pub fn count_request(body: Body, tally: Arc<RequestTally>, info: &StreamInfo) -> Body {
    let started = info.started;
    if body.is_end_stream() {
        tally.done_us.store(1, Ordering::Relaxed);
        return body;
    }
    RequestCounter {
        inner: body,
        tally,
        started,
    }
    .boxed_unsync()
}

struct RequestCounter {
    inner: Body,
    tally: Arc<RequestTally>,
    started: std::time::Instant,
}

impl http_body::Body for RequestCounter {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                self.tally
                    .bytes
                    .fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        if matches!(r, Poll::Ready(None)) || self.inner.is_end_stream() {
            let us = self.started.elapsed().as_micros() as u64 + 1;
            let _ =
                self.tally
                    .done_us
                    .compare_exchange(0, us, Ordering::Relaxed, Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the response wrapper needs to close out the request.
pub struct Finish {
    pub record: Record,
    /// Where the request's time (`downstream_rq_time`) and a response body
    /// that went idle (`downstream_rq_idle_timeout`) are counted.
    pub stats: Arc<crate::stats::HttpStats>,
    pub tally: Option<Arc<RequestTally>>,
    pub logs: Arc<AccessLogs>,
    pub tracer: Option<Arc<crate::tracing_ctx::otlp::Exporter>>,
}

/// Wraps the response body; `response` is kept only for access logs.
pub fn finish_response(mut resp: http::Response<Body>, finish: Finish) -> http::Response<Body> {
    let headers = (!finish.logs.is_empty()).then(|| resp.headers().clone());
    let body = std::mem::replace(resp.body_mut(), crate::body::empty());
    let idle = finish
        .record
        .response_idle
        .map(|d| crate::body::IdleTimer::new(d, finish.stats.clone()));
    *resp.body_mut() = ResponseCounter {
        inner: body,
        idle,
        state: Some(State {
            finish,
            headers,
            trailers: None,
        }),
    }
    .boxed_unsync();
    resp
}

struct State {
    finish: Finish,
    headers: Option<HeaderMap>,
    trailers: Option<HeaderMap>,
}

/// Wraps the response body once for all it has to watch: the request's
/// end, its byte counts and trailers, and the stream idle timeout.
struct ResponseCounter {
    inner: Body,
    idle: Option<crate::body::IdleTimer>,
    state: Option<State>,
}

impl ResponseCounter {
    fn done(&mut self) {
        let Some(State {
            finish: mut f,
            headers,
            trailers,
        }) = self.state.take()
        else {
            return;
        };
        if let (Some(tracer), Some(trace)) = (&f.tracer, &f.record.trace) {
            crate::tracing_ctx::export(tracer, trace, &f.record.info);
        }
        let info = &mut f.record.info;
        let elapsed = info.started.elapsed();
        info.done = Some(elapsed);
        f.stats.downstream_rq_time.record(elapsed);
        if f.logs.is_empty() {
            return;
        }
        if let Some(t) = &f.tally {
            info.bytes_received = t.bytes.load(Ordering::Relaxed);
            let us = t.done_us.load(Ordering::Relaxed);
            info.request_done = (us > 0).then(|| std::time::Duration::from_micros(us - 1));
        }
        let ctx = Context {
            response: headers.as_ref(),
            trailers: trailers.as_ref(),
            ..f.record.ctx()
        };
        f.logs.log(&ctx);
    }
}

impl http_body::Body for ResponseCounter {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(t) = this.idle.as_mut() {
            if t.expired(cx, r.is_ready()) {
                r = Poll::Ready(Some(Err(Box::new(crate::body::StreamIdleTimeout))));
            }
        }
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(s) = self.state.as_mut() {
                    if let Some(d) = f.data_ref() {
                        s.finish.record.info.bytes_sent += d.len() as u64;
                    } else if let Some(t) = f.trailers_ref() {
                        if s.headers.is_some() {
                            s.trailers = Some(t.clone());
                        }
                    }
                }
                if self.inner.is_end_stream() {
                    self.done();
                }
            }
            Poll::Ready(Some(Err(e))) => {
                // The stream idle timeout ends a body with its own error.
                let flag = if e.is::<crate::body::StreamIdleTimeout>() {
                    crate::http::ResponseFlags::STREAM_IDLE_TIMEOUT
                } else {
                    crate::http::ResponseFlags::UPSTREAM_CONNECTION_TERMINATION
                };
                if let Some(s) = self.state.as_mut() {
                    s.finish.record.info.flags.set(flag);
                }
                self.done();
            }
            Poll::Ready(None) => self.done(),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseCounter {
    /// A client that leaves mid-body still gets its request logged.
    fn drop(&mut self) {
        if self.state.is_some() && !self.inner.is_end_stream() {
            if let Some(s) = self.state.as_mut() {
                s.finish
                    .record
                    .info
                    .flags
                    .set(crate::http::ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
            }
        }
        self.done();
    }
}
