//! Batched writes on downstream HTTP/2 connections.
//!
//! The h2 codec writes every DATA frame of 256 bytes or more on its own and
//! flushes after it, so each response costs one `writev` and, over TLS, one
//! record: the client then reads responses one at a time. Envoy writes what
//! a connection has once per turn of its event loop. This wrapper does the
//! same for HTTP/2: writes are gathered in a buffer, the first flush of a
//! batch only wakes the connection's task (so the other ready tasks run and
//! add their responses), and the batch goes out in one write at the first
//! flush of a later poll of the connection, which every h2 poll ends with.
//! HTTP/1 connections, told apart by the client's first bytes, are passed
//! through untouched.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A batch is written before it grows past this.
const MAX_BATCH: usize = 32 * 1024;
/// Writes at least this large skip the buffer (after what it holds): for
/// them a copy costs more than a separate write.
const DIRECT: usize = 8 * 1024;
/// The start of the HTTP/2 connection preface, which no HTTP/1 request has.
const H2_PREFACE: &[u8] = b"PRI ";

/// Counts the polls of a connection's future, so that its stream can tell
/// one poll from the next.
#[derive(Debug, Clone, Default)]
pub struct PollCount(Arc<AtomicU64>);

impl PollCount {
    /// Runs `fut`, counting each time it is polled.
    pub async fn count<F: Future>(&self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            self.0.fetch_add(1, Ordering::Relaxed);
            fut.as_mut().poll(cx)
        })
        .await
    }

    fn current(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Nothing read yet.
    Detect,
    Http2,
    PassThrough,
}

#[derive(Debug)]
pub struct Coalesce<T> {
    inner: T,
    mode: Mode,
    buf: Vec<u8>,
    /// Written out of `buf` so far (a write may take part of it).
    sent: usize,
    /// The poll in which the buffered batch was first flushed.
    held_since: Option<u64>,
    polls: PollCount,
}

impl<T> Coalesce<T> {
    /// `polls` must count the polls of the future that drives this stream.
    pub fn new(inner: T, polls: PollCount) -> Coalesce<T> {
        Coalesce {
            inner,
            mode: Mode::Detect,
            buf: Vec::new(),
            sent: 0,
            held_since: None,
            polls,
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes the whole batch out.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.sent = 0;
        self.held_since = None;
        if self.buf.capacity() > MAX_BATCH {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        Poll::Ready(Ok(()))
    }

    /// Buffers `bufs` (or, when large, writes them through after the batch).
    fn poll_gather(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if len >= DIRECT || self.buf.len() + len > MAX_BATCH {
            ready!(self.poll_drain(cx))?;
            if len >= DIRECT {
                return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
            }
        }
        for b in bufs {
            self.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if this.mode == Mode::Detect {
            let got = &buf.filled()[before..];
            let n = got.len().min(H2_PREFACE.len());
            if got[..n] != H2_PREFACE[..n] {
                this.mode = Mode::PassThrough;
            } else if n == H2_PREFACE.len() {
                this.mode = Mode::Http2;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.mode {
            Mode::Http2 => this.poll_gather(cx, &[io::IoSlice::new(data)]),
            _ => Pin::new(&mut this.inner).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.mode {
            Mode::Http2 => this.poll_gather(cx, bufs),
            _ => Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
        }
    }

    /// Codecs choose their write strategy once, before the first bytes are
    /// read: vectored writes suit both modes.
    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        let now = this.polls.current();
        match this.held_since {
            None => {
                // Let the other ready tasks add to the batch; the task comes
                // back to this stream's next flush.
                this.held_since = Some(now);
                cx.waker().wake_by_ref();
                Poll::Ready(Ok(()))
            }
            Some(poll) if poll == now => Poll::Ready(Ok(())),
            Some(_) => {
                ready!(this.poll_drain(cx))?;
                Pin::new(&mut this.inner).poll_flush(cx)
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client writes `first`; the proxy side reads it, then writes three
    /// small frames, flushing after each. Returns what the client had
    /// received after each flush, and what arrived after the last one.
    async fn writes_seen(first: &[u8]) -> (Vec<Vec<u8>>, Vec<u8>) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let polls = PollCount::default();
        let mut s = Coalesce::new(server, polls.clone());
        let (mut client_r, mut client_w) = tokio::io::split(client);
        client_w.write_all(first).await.expect("client writes");
        let mut got = vec![0u8; first.len()];
        s.read_exact(&mut got).await.expect("server reads");
        let serve = async move {
            let mut seen = Vec::new();
            for frame in [&b"aa"[..], b"bbb", b"c"] {
                s.write_all(frame).await.expect("write");
                s.flush().await.expect("flush");
                let mut buf = vec![0u8; 64];
                let read = client_r.read(&mut buf);
                let n = tokio::time::timeout(std::time::Duration::from_millis(20), read)
                    .await
                    .map_or(0, |r| r.expect("read"));
                seen.push(buf[..n].to_vec());
            }
            s.shutdown().await.expect("shutdown");
            (seen, client_r)
        };
        let (seen, mut client_r) = polls.count(serve).await;
        let mut rest = Vec::new();
        client_r.read_to_end(&mut rest).await.expect("rest");
        (seen, rest)
    }

    #[tokio::test]
    async fn http2_writes_are_batched_and_all_arrive() {
        let (seen, rest) = writes_seen(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let all: Vec<u8> = seen.concat().into_iter().chain(rest).collect();
        assert_eq!(all, b"aabbbc", "every byte arrives, in order");
        assert!(
            seen.iter().filter(|s| !s.is_empty()).count() < 3,
            "flushes were batched: {seen:?}"
        );
    }

    #[tokio::test]
    async fn http1_writes_pass_straight_through() {
        let (seen, rest) = writes_seen(b"GET / HTTP/1.1\r\n").await;
        assert_eq!(seen, vec![b"aa".to_vec(), b"bbb".to_vec(), b"c".to_vec()]);
        assert!(rest.is_empty());
    }
}
