//! Writing one HTTP/1.1 message: its head, then its body's frames through
//! the framing encoder, in as few writes as the pieces allow.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http_body::Body as _;
use tokio::io::AsyncWrite;

use super::body::{BodyError, Encoder};
use crate::body::{Body, BoxError};

/// Pieces handed to one vectored write.
const MAX_SLICES: usize = 16;

/// Bytes queued for the socket. A head and one body frame, the common
/// message, fit inline and cost no allocation.
pub type Pieces = smallvec::SmallVec<[Bytes; 3]>;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("write: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Framing(#[from] BodyError),
    #[error("body: {0}")]
    Body(BoxError),
}

/// A message on its way out: queued bytes, then the body's frames.
pub struct Writer {
    queue: Pieces,
    body: Option<Body>,
    encoder: Encoder,
    state: State,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Body,
    Flush,
    Done,
}

impl Writer {
    /// `body`: `None` when nothing follows the head.
    pub fn new(head: Bytes, body: Option<Body>, encoder: Encoder) -> Writer {
        let mut queue = Pieces::new();
        queue.push(head);
        Writer {
            queue,
            body,
            encoder,
            state: State::Body,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Writes until the message is out or something is pending.
    pub fn poll<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut W,
    ) -> Poll<Result<(), WriteError>> {
        loop {
            let waiting = self.gather(cx)?;
            ready!(self.poll_drain(cx, io))?;
            if self.is_done() {
                return Poll::Ready(Ok(()));
            }
            if waiting {
                // What was written waits for no more body (TLS).
                let _ = Pin::new(&mut *io).poll_flush(cx)?;
                return Poll::Pending;
            }
        }
    }

    /// Queues what the body has ready, so that the head and the first
    /// frames go out in one write; true when the body is waiting for more.
    /// Touches no socket, so it may run without the writer's.
    pub fn gather(&mut self, cx: &mut Context<'_>) -> Result<bool, WriteError> {
        while self.state == State::Body && self.queue.len() < MAX_SLICES {
            if self.poll_fill(cx)?.is_pending() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Writes the queued bytes out, and flushes once the body has ended.
    pub fn poll_drain<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut W,
    ) -> Poll<io::Result<()>> {
        while !self.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let n = self.queue.len().min(MAX_SLICES);
            for (s, b) in slices.iter_mut().zip(self.queue.iter()) {
                *s = IoSlice::new(b);
            }
            let mut written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let mut sent = 0;
            for piece in &mut self.queue {
                let k = written.min(piece.len());
                piece.advance(k);
                written -= k;
                if !piece.is_empty() {
                    break;
                }
                sent += 1;
            }
            self.queue.drain(..sent);
        }
        if self.state == State::Flush {
            ready!(Pin::new(&mut *io).poll_flush(cx))?;
            self.state = State::Done;
            self.body = None;
        }
        Poll::Ready(Ok(()))
    }

    /// Queues the body's next frame (or its end); `Pending` while the body
    /// has nothing.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        if self.state != State::Body {
            return Poll::Ready(Ok(()));
        }
        let Some(body) = self.body.as_mut() else {
            self.encoder.end(None, &mut self.queue)?;
            self.state = State::Flush;
            return Poll::Ready(Ok(()));
        };
        match ready!(Pin::new(body).poll_frame(cx)) {
            None => {
                self.encoder.end(None, &mut self.queue)?;
                self.state = State::Flush;
            }
            Some(Err(e)) => return Poll::Ready(Err(WriteError::Body(e))),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => self.encoder.data(data, &mut self.queue)?,
                Err(frame) => {
                    let trailers = frame.into_trailers().ok();
                    self.encoder.end(trailers.as_ref(), &mut self.queue)?;
                    self.state = State::Flush;
                }
            },
        }
        Poll::Ready(Ok(()))
    }
}
