//! Envoy's stream idle timeout while a request waits for its response
//! headers: nothing moved on the stream (no request body frame, no answer)
//! for `stream_idle_timeout`, or the route's `idle_timeout`. After the
//! headers, [`crate::body::IdleTimer`] watches the response body.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;

use crate::body::{Body, BoxError};
use crate::io::Activity;

/// The stream went idle before the response headers came.
pub struct TimedOut {
    /// Whether the whole request had arrived: Envoy answers 504 then, and
    /// 408 while the client was still sending.
    request_complete: bool,
}

impl TimedOut {
    pub fn status(&self) -> StatusCode {
        if self.request_complete {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::REQUEST_TIMEOUT
        }
    }
}

/// Envoy's local reply body for this timeout.
pub const STREAM_TIMEOUT: &str = "stream timeout";

/// What watches a stream for idleness: built before the request's future,
/// which then borrows nothing from it, so the caller can pin that future in
/// place and lend it to [`Watch::run`] (moving a future of kilobytes into a
/// wrapper would copy it, once per request).
pub struct Watch {
    idle: Option<Duration>,
    /// Set when the request body is still arriving: its frames count as
    /// activity, and whether it ended decides between 408 and 504.
    body: Option<(Activity, Arc<AtomicBool>)>,
}

impl Watch {
    /// Wraps a body still arriving so that its frames count as activity.
    pub fn new(idle: Option<Duration>, body: Body) -> (Watch, Body) {
        if idle.is_none() || body.is_end_stream() {
            return (Watch { idle, body: None }, body);
        }
        let activity = Activity::default();
        let done = Arc::new(AtomicBool::new(false));
        let watched = Watched {
            inner: body,
            activity: activity.clone(),
            done: done.clone(),
        }
        .boxed_unsync();
        let watch = Watch {
            idle,
            body: Some((activity, done)),
        };
        (watch, watched)
    }

    /// Runs `sent` until it ends or the stream is idle for the timeout. A
    /// bodiless request needs no activity tracking, so it costs one timer.
    pub async fn run<F: Future + Unpin>(self, sent: F) -> Result<F::Output, TimedOut> {
        let Some(idle) = self.idle else {
            return Ok(sent.await);
        };
        match self.body {
            None => tokio::time::timeout(idle, sent)
                .await
                .map_err(|_| TimedOut {
                    request_complete: true,
                }),
            Some((activity, done)) => activity.run(sent, idle).await.ok_or_else(|| TimedOut {
                request_complete: done.load(Ordering::Relaxed),
            }),
        }
    }
}

/// A request body that marks the stream active on every frame and
/// records when it has been read to its end.
struct Watched {
    inner: Body,
    activity: Activity,
    done: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(f) = &frame {
            this.activity.touch();
            if f.is_none() || this.inner.is_end_stream() {
                this.done.store(true, Ordering::Relaxed);
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
