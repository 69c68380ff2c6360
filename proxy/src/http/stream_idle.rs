//! Envoy's stream idle timeout while a request waits for its response
//! headers: nothing moved on the stream (no request body frame, no answer)
//! for `stream_idle_timeout`, or the route's `idle_timeout`. After the
//! headers, [`crate::body::with_idle_timeout`] watches the response body.

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

/// Runs `send(body)` until it ends or the stream is idle for `idle`. A
/// bodiless request needs no activity tracking, so it costs one timer.
pub async fn run<F, Fut>(
    idle: Option<Duration>,
    body: Body,
    send: F,
) -> Result<Fut::Output, TimedOut>
where
    F: FnOnce(Body) -> Fut,
    Fut: Future,
{
    let Some(idle) = idle else {
        return Ok(send(body).await);
    };
    if body.is_end_stream() {
        return tokio::time::timeout(idle, send(body))
            .await
            .map_err(|_| TimedOut {
                request_complete: true,
            });
    }
    let activity = Activity::default();
    let done = Arc::new(AtomicBool::new(false));
    let watched = Watched {
        inner: body,
        activity: activity.clone(),
        done: done.clone(),
    }
    .boxed_unsync();
    let sent = std::pin::pin!(send(watched));
    activity.run(sent, idle).await.ok_or_else(|| TimedOut {
        request_complete: done.load(Ordering::Relaxed),
    })
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
