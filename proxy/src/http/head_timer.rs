//! `request_headers_timeout` for HTTP/1: Envoy's timer runs from the first
//! byte of a request head to its end, so an idle keep-alive connection is
//! not cut (hyper's own header timeout also runs while idle). The HTTP/1
//! guard, which knows where heads start and end, drives it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;

use crate::stats::HttpStats;

/// Envoy's answer, byte for byte in status, body and `connection: close`.
const RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 22\r\n\
content-type: text/plain\r\nconnection: close\r\n\r\nrequest header timeout";

#[derive(Debug)]
pub struct HeadTimer {
    limit: Duration,
    stats: Arc<HttpStats>,
    /// Armed at the first byte of a head that did not end in the same read.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes written since the last completed flush: a 408 written now could
    /// land inside an earlier response, so none is.
    unflushed: bool,
}

impl HeadTimer {
    pub fn new(limit: Duration, stats: Arc<HttpStats>) -> HeadTimer {
        HeadTimer {
            limit,
            stats,
            sleep: None,
            unflushed: false,
        }
    }

    /// After each read: whether a head is still incomplete.
    pub fn track(&mut self, in_head: bool) {
        match (in_head, &self.sleep) {
            (true, None) => self.sleep = Some(Box::pin(tokio::time::sleep(self.limit))),
            (false, Some(_)) => self.sleep = None,
            _ => {}
        }
    }

    pub fn wrote(&mut self, n: usize) {
        self.unflushed |= n > 0;
    }

    pub fn flushed(&mut self) {
        self.unflushed = false;
    }

    /// On a read that found nothing: `Some` once the head is late, after
    /// answering 408 when that is safe. The error makes hyper close.
    pub fn poll_expired<W: AsyncWrite + Unpin>(
        &mut self,
        out: &mut W,
        cx: &mut Context<'_>,
    ) -> Option<io::Error> {
        let sleep = self.sleep.as_mut()?;
        if sleep.as_mut().poll(cx).is_pending() {
            return None;
        }
        self.sleep = None;
        self.stats.downstream_rq_header_timeout.inc();
        self.stats.downstream_rq.record(408);
        if !self.unflushed {
            // Best effort into an idle socket buffer; a short write only
            // truncates an answer to a client that is going away anyway.
            let mut out = Pin::new(out);
            if let Poll::Ready(Ok(_)) = out.as_mut().poll_write(cx, RESPONSE) {
                let _ = out.poll_flush(cx);
            }
        }
        Some(io::Error::new(
            io::ErrorKind::TimedOut,
            "request header timeout",
        ))
    }
}
