//! Socket wrappers: activity tracking for idle timeouts.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The last time bytes moved on any of the streams that share it, on the
/// kernel's coarse monotonic clock: every read and write stamps it, and the
/// coarse clock costs a fraction of the precise one, a few milliseconds
/// being nothing next to an idle timeout.
#[derive(Debug, Clone)]
pub struct Activity {
    last_ms: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            last_ms: Arc::new(AtomicU64::new(coarse_ms())),
        }
    }
}

/// Milliseconds on the kernel's coarse monotonic clock (a tick behind the
/// precise one at most).
pub(crate) fn coarse_ms() -> u64 {
    let now = coarsetime::Instant::now_without_cache_update();
    coarsetime::Duration::from_ticks(now.as_ticks()).as_millis()
}

impl Activity {
    pub(crate) fn touch(&self) {
        self.last_ms.store(coarse_ms(), Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = self.last_ms.load(Ordering::Relaxed);
        Duration::from_millis(coarse_ms().saturating_sub(last))
    }

    /// Runs `fut` until it ends or nothing moved for `idle`; `None` on timeout.
    /// `Unpin`: callers lend a pinned future (`std::pin::pin!`), which their
    /// own state then holds once; taken by value and pinned here, it would be
    /// stored twice, as the argument and as the pinned copy.
    pub async fn run<F: Future + Unpin>(&self, mut fut: F, idle: Duration) -> Option<F::Output> {
        self.touch();
        let mut wait = idle;
        loop {
            match tokio::time::timeout(wait, &mut fut).await {
                Ok(out) => return Some(out),
                Err(_) => {
                    let quiet = self.idle_for();
                    if quiet >= idle {
                        return None;
                    }
                    wait = idle - quiet;
                }
            }
        }
    }
}

/// A stream that records activity on every read or write that moves bytes,
/// and counts the bytes read (however the copy using it ends).
#[derive(Debug)]
pub struct Tracked<T> {
    inner: T,
    activity: Activity,
    read: u64,
}

impl<T> Tracked<T> {
    pub fn new(inner: T, activity: Activity) -> Tracked<T> {
        Tracked {
            inner,
            activity,
            read: 0,
        }
    }

    pub fn bytes_read(&self) -> u64 {
        self.read
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.activity.touch();
            self.read += read as u64;
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &r {
            if *n > 0 {
                self.activity.touch();
            }
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            if *n > 0 {
                self.activity.touch();
            }
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A stream whose first bytes were already read: they are handed out again
/// before the stream is read further (a protocol switch, h2c detection).
#[derive(Debug)]
pub struct Prefixed<T> {
    pre: bytes::Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(pre: bytes::Bytes, inner: T) -> Prefixed<T> {
        Prefixed { pre, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
