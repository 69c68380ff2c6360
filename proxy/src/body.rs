//! The one body type that flows through the proxy in both directions.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Streams frames with backpressure; never buffered whole unless a retry needs it.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

pub fn incoming(b: hyper::body::Incoming) -> Body {
    b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()
}

/// Envoy's `stream_idle_timeout` after the response headers: the body that
/// carries it ends with [`StreamIdleTimeout`] when no frame moves for
/// `idle` (the HTTP codec then resets the stream), counted in
/// `downstream_rq_idle_timeout`. The timer is armed only when the body first
/// has to wait, so a response that arrives in one piece never touches the
/// timer wheel.
pub struct IdleTimer {
    idle: std::time::Duration,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    stats: std::sync::Arc<crate::stats::HttpStats>,
}

#[derive(Debug, thiserror::Error)]
#[error("stream idle timeout")]
pub struct StreamIdleTimeout;

impl IdleTimer {
    pub fn new(
        idle: std::time::Duration,
        stats: std::sync::Arc<crate::stats::HttpStats>,
    ) -> IdleTimer {
        IdleTimer {
            idle,
            sleep: None,
            stats,
        }
    }

    /// Called after each poll of the body: `moved` when it had a frame (or
    /// its end). True once the body has been idle for too long.
    pub fn expired(&mut self, cx: &mut std::task::Context<'_>, moved: bool) -> bool {
        use std::future::Future;
        if moved {
            if let Some(sleep) = self.sleep.as_mut() {
                sleep
                    .as_mut()
                    .reset(tokio::time::Instant::now() + self.idle);
            }
            return false;
        }
        let idle = self.idle;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        if sleep.as_mut().poll(cx).is_ready() {
            self.stats.downstream_rq_idle_timeout.inc();
            return true;
        }
        false
    }
}

/// Fails a request body still arriving at `deadline` (Envoy's
/// `request_timeout`), and records that it did so the caller answers 408.
pub fn with_deadline(
    inner: Body,
    deadline: tokio::time::Instant,
    expired: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Body {
    DeadlineBody {
        inner,
        sleep: Box::pin(tokio::time::sleep_until(deadline)),
        expired,
    }
    .boxed_unsync()
}

struct DeadlineBody {
    inner: Body,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    expired: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("request timeout")]
pub struct RequestTimeout;

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame),
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.expired
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    Poll::Ready(Some(Err(Box::new(RequestTimeout))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
