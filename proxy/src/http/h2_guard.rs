//! A guard on the downstream bytes of HTTP/2 connections, below hyper and h2.
//!
//! h2 bounds what one connection can make the proxy hold (header lists,
//! CONTINUATION runs, one pending PING or SETTINGS answer at a time), but
//! it neither counts what it refuses nor stops a client whose abuse stays
//! within those bounds. The guard follows frame boundaries in both
//! directions, counts Envoy's codec stats, and closes a connection that
//! - resets too many of its own streams (rapid reset, CVE-2023-44487), by
//!   Envoy's premature-reset rule: once half of its streams are reset, after
//!   at least [`PREMATURE_RESET_STREAMS`] / 2 resets;
//! - sends more PING or SETTINGS frames than `max_outbound_control_frames`
//!   within one second (a control-frame flood);
//! - takes longer than `request_headers_timeout` over one header block, from
//!   its HEADERS frame to the end of the frame that carries END_HEADERS
//!   (a slowloris over HEADERS and trickled CONTINUATION frames). Envoy
//!   answers that stream 408; below h2 the guard cannot, and as a header
//!   block holds up the whole connection (nothing may come between its
//!   frames), it closes the connection and counts the same
//!   `downstream_rq_header_timeout`.
//!
//! Outbound, every RST_STREAM is `http2.tx_reset`; a GOAWAY with an error
//! is the connection manager's `downstream_cx_protocol_error` (h2 giving up
//! on a CONTINUATION flood or an HPACK bomb), or, when h2's own rapid-reset
//! check sent it, `downstream_rq_too_many_premature_resets`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::stats::{Http2Stats, HttpStats};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
/// The debug data h2 puts in the GOAWAY of its own rapid-reset check.
const H2_TOO_MANY_RESETS: &[u8] = b"too_many_resets";
/// Envoy's `overload.premature_reset_total_stream_count` default.
pub const PREMATURE_RESET_STREAMS: u64 = 500;
const CONTROL_WINDOW: Duration = Duration::from_secs(1);

/// The downstream stream of an HTTP connection, HTTP/2 frames followed.
#[derive(Debug)]
pub struct H2Guard<T> {
    inner: T,
    state: State,
    inbound: Frames,
    outbound: Frames,
    /// `None` for connections that cannot speak HTTP/2.
    policy: Option<Policy>,
    /// Runs while a header block is incomplete; made at the first slow one.
    head_timer: Option<Pin<Box<Sleep>>>,
    head_timer_armed: bool,
}

#[derive(Debug)]
enum State {
    /// Matching the client preface; this many bytes matched so far.
    Preface(usize),
    Frames,
    /// Not HTTP/2 (or the guard is not wanted): bytes pass untouched.
    Off,
    /// The connection broke a rule; every read fails from now on.
    Closed(Abuse),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Abuse {
    PrematureResets,
    ControlFlood,
    HeaderTimeout,
}

/// What the guard counts and the limits it enforces.
#[derive(Debug)]
pub struct Limits {
    pub max_control_frames: u32,
    /// `request_headers_timeout`, for one header block.
    pub head_timeout: Option<Duration>,
    pub http: Arc<HttpStats>,
    pub http2: Arc<Http2Stats>,
}

#[derive(Debug)]
struct Policy {
    limits: Limits,
    last_stream: u32,
    streams: u64,
    resets: u64,
    window_start: Option<Instant>,
    control_frames: u32,
    /// A HEADERS frame came without END_HEADERS; its CONTINUATIONs follow.
    block_open: bool,
}

impl<T> H2Guard<T> {
    /// `None`: a connection that cannot speak HTTP/2 passes untouched.
    pub fn new(inner: T, limits: Option<Limits>) -> H2Guard<T> {
        H2Guard {
            inner,
            state: if limits.is_some() {
                State::Preface(0)
            } else {
                State::Off
            },
            inbound: Frames::default(),
            outbound: Frames::default(),
            policy: limits.map(Policy::new),
            head_timer: None,
            head_timer_armed: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for H2Guard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let policy = match (&this.state, this.policy.as_mut()) {
            (State::Closed(abuse), _) => return Poll::Ready(Err(abuse.error())),
            (State::Off, _) | (_, None) => return Pin::new(&mut this.inner).poll_read(cx, buf),
            (_, Some(p)) => p,
        };
        if this.head_timer_armed {
            if let Some(t) = this.head_timer.as_mut() {
                if t.as_mut().poll(cx).is_ready() {
                    let a = Abuse::HeaderTimeout;
                    policy.count(a);
                    this.state = State::Closed(a);
                    return Poll::Ready(Err(a.error()));
                }
            }
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let mut bytes = &buf.filled()[before..];
        if let State::Preface(matched) = this.state {
            let n = (PREFACE.len() - matched).min(bytes.len());
            if bytes[..n] != PREFACE[matched..matched + n] {
                this.state = State::Off;
                return Poll::Ready(Ok(()));
            }
            this.state = if matched + n == PREFACE.len() {
                State::Frames
            } else {
                State::Preface(matched + n)
            };
            bytes = &bytes[n..];
        }
        let mut abuse = None;
        this.inbound.feed(bytes, &mut |f| {
            abuse = policy.inbound(f);
            abuse.is_none()
        });
        if let Some(a) = abuse {
            policy.count(a);
            this.state = State::Closed(a);
            return Poll::Ready(Err(a.error()));
        }
        let in_block = policy.block_open || this.inbound.mid_header_frame();
        match (policy.limits.head_timeout, in_block, this.head_timer_armed) {
            (Some(limit), true, false) => {
                let deadline = tokio::time::Instant::now() + limit;
                match this.head_timer.as_mut() {
                    Some(t) => t.as_mut().reset(deadline),
                    None => this.head_timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
                if let Some(t) = this.head_timer.as_mut() {
                    // Registers the waker: the next bytes may never come.
                    let _ = t.as_mut().poll(cx);
                }
                this.head_timer_armed = true;
            }
            (_, false, true) => this.head_timer_armed = false,
            _ => {}
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for H2Guard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        if let Some(policy) = this.policy.as_mut().filter(|_| follows_writes(&this.state)) {
            this.outbound.feed(&buf[..n], &mut |f| policy.outbound(f));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        if let Some(policy) = this.policy.as_mut().filter(|_| follows_writes(&this.state)) {
            let mut left = n;
            for b in bufs {
                let take = left.min(b.len());
                this.outbound.feed(&b[..take], &mut |f| policy.outbound(f));
                left -= take;
                if left == 0 {
                    break;
                }
            }
        }
        Poll::Ready(Ok(n))
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

/// h2 may write its SETTINGS before the client's preface has arrived; an
/// HTTP/1 connection turns the guard off before it answers anything.
fn follows_writes(state: &State) -> bool {
    matches!(state, State::Preface(_) | State::Frames)
}

impl Abuse {
    fn error(self) -> io::Error {
        let what = match self {
            Abuse::PrematureResets => "too many premature stream resets",
            Abuse::ControlFlood => "PING/SETTINGS flood",
            Abuse::HeaderTimeout => "request header timeout",
        };
        io::Error::new(io::ErrorKind::ConnectionAborted, what)
    }
}

impl Policy {
    fn new(limits: Limits) -> Policy {
        Policy {
            limits,
            last_stream: 0,
            streams: 0,
            resets: 0,
            window_start: None,
            control_frames: 0,
            block_open: false,
        }
    }

    /// A frame from the client; `Some` when it crosses a limit.
    fn inbound(&mut self, f: Frame) -> Option<Abuse> {
        if f.kind == HEADERS || f.kind == CONTINUATION {
            self.block_open = f.flags & END_HEADERS == 0;
        }
        match f.kind {
            HEADERS if f.stream % 2 == 1 && f.stream > self.last_stream => {
                self.last_stream = f.stream;
                self.streams += 1;
            }
            RST_STREAM => {
                self.limits.http2.rx_reset.inc();
                // NO_ERROR is how some clients close a stream the server
                // already finished; it is no abuse.
                let client_stream = f.stream % 2 == 1 && f.stream <= self.last_stream;
                if client_stream && f.code != Some(0) {
                    self.resets += 1;
                    if too_many_resets(self.resets, self.streams) {
                        return Some(Abuse::PrematureResets);
                    }
                }
            }
            SETTINGS | PING if f.flags & ACK == 0 => {
                let now = Instant::now();
                match self.window_start {
                    Some(start) if now.duration_since(start) < CONTROL_WINDOW => {}
                    _ => {
                        self.window_start = Some(now);
                        self.control_frames = 0;
                    }
                }
                self.control_frames += 1;
                if self.control_frames > self.limits.max_control_frames {
                    return Some(Abuse::ControlFlood);
                }
            }
            _ => {}
        }
        None
    }

    /// A frame h2 sent; always carry on.
    fn outbound(&mut self, f: Frame) -> bool {
        match f.kind {
            RST_STREAM => self.limits.http2.tx_reset.inc(),
            GOAWAY if f.rapid_reset => self
                .limits
                .http
                .downstream_rq_too_many_premature_resets
                .inc(),
            GOAWAY if f.code.is_some_and(|c| c != 0) => {
                self.limits.http.downstream_cx_protocol_error.inc()
            }
            _ => {}
        }
        true
    }

    fn count(&self, abuse: Abuse) {
        match abuse {
            Abuse::PrematureResets => self
                .limits
                .http
                .downstream_rq_too_many_premature_resets
                .inc(),
            Abuse::ControlFlood => self.limits.http2.outbound_control_flood.inc(),
            Abuse::HeaderTimeout => self.limits.http.downstream_rq_header_timeout.inc(),
        }
    }
}

/// Envoy's rule: before [`PREMATURE_RESET_STREAMS`] streams, half that many
/// resets close the connection; after, resets on half of the streams do.
fn too_many_resets(resets: u64, streams: u64) -> bool {
    if streams < PREMATURE_RESET_STREAMS {
        resets * 2 >= PREMATURE_RESET_STREAMS
    } else {
        resets * 2 >= streams
    }
}

/// One frame's header, and the error code of RST_STREAM and GOAWAY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    code: Option<u32>,
    /// A GOAWAY whose debug data is h2's rapid-reset verdict.
    rapid_reset: bool,
}

/// Frame boundaries in one direction of the connection, across reads.
#[derive(Debug, Default)]
struct Frames {
    head: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to come.
    left: usize,
    /// The first payload bytes of RST_STREAM (code) and GOAWAY (last
    /// stream, code, the start of the debug data).
    capture: [u8; 8 + H2_TOO_MANY_RESETS.len()],
    captured: usize,
    want: usize,
}

impl Frames {
    /// Calls `on` for each frame whose header (and error code) is complete;
    /// stops when `on` returns false.
    fn feed(&mut self, mut bytes: &[u8], on: &mut dyn FnMut(Frame) -> bool) {
        while !bytes.is_empty() {
            if self.have < self.head.len() {
                let n = (self.head.len() - self.have).min(bytes.len());
                self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have < self.head.len() {
                    return;
                }
                let h = &self.head;
                self.left = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                self.want = match h[3] {
                    RST_STREAM => 4,
                    GOAWAY => self.capture.len(),
                    _ => 0,
                }
                .min(self.left);
                self.captured = 0;
                if self.want == 0 && !on(self.frame(None)) {
                    return;
                }
            }
            if self.captured < self.want {
                let n = (self.want - self.captured).min(bytes.len());
                self.capture[self.captured..self.captured + n].copy_from_slice(&bytes[..n]);
                self.captured += n;
                self.left -= n;
                bytes = &bytes[n..];
                if self.captured == self.want && !on(self.captured_frame()) {
                    return;
                }
            }
            let n = self.left.min(bytes.len());
            self.left -= n;
            bytes = &bytes[n..];
            if self.left == 0 && self.captured >= self.want {
                self.have = 0;
            }
        }
    }

    /// Inside the payload of a HEADERS or CONTINUATION frame.
    fn mid_header_frame(&self) -> bool {
        self.have == self.head.len()
            && self.left > 0
            && matches!(self.head[3], HEADERS | CONTINUATION)
    }

    fn frame(&self, code: Option<u32>) -> Frame {
        let h = &self.head;
        Frame {
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
            code,
            rapid_reset: false,
        }
    }

    /// The frame once its error code (and GOAWAY debug data) is in.
    fn captured_frame(&self) -> Frame {
        let at = if self.head[3] == RST_STREAM { 0 } else { 4 };
        let c = &self.capture[..self.captured];
        let code = c
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        Frame {
            rapid_reset: self.head[3] == GOAWAY && c.get(8..) == Some(H2_TOO_MANY_RESETS),
            ..self.frame(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut v = len.to_be_bytes()[1..].to_vec();
        v.extend([kind, flags]);
        v.extend(stream.to_be_bytes());
        v.extend(payload);
        v
    }

    fn frames_of(bytes: &[u8], chunk: usize) -> Vec<Frame> {
        let mut f = Frames::default();
        let mut out = Vec::new();
        for c in bytes.chunks(chunk) {
            f.feed(c, &mut |x| {
                out.push(x);
                true
            });
        }
        out
    }

    #[test]
    fn frames_are_found_however_the_bytes_are_split() {
        let mut bytes = frame(HEADERS, 0x5, 1, b"abc");
        bytes.extend(frame(0x0, 0x1, 1, &[7; 100]));
        bytes.extend(frame(RST_STREAM, 0, 3, &8u32.to_be_bytes()));
        bytes.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 11]));
        bytes.extend(frame(PING, ACK, 0, &[0; 8]));
        let expected = vec![
            f(HEADERS, 0x5, 1, None),
            f(0, 1, 1, None),
            f(RST_STREAM, 0, 3, Some(8)),
            f(GOAWAY, 0, 0, Some(11)),
            f(PING, ACK, 0, None),
        ];
        for chunk in [1, 2, 5, 9, 10, 1000] {
            assert_eq!(frames_of(&bytes, chunk), expected, "chunk {chunk}");
        }
    }

    #[test]
    fn a_short_rst_stream_has_no_code() {
        let mut bytes = frame(RST_STREAM, 0, 1, &[0, 8]);
        bytes.extend(frame(PING, 0, 0, &[0; 8]));
        let got = frames_of(&bytes, 3);
        assert_eq!(got[0].code, None);
        assert_eq!(got[1].kind, PING);
    }

    #[test]
    fn the_premature_reset_rule_is_envoys() {
        assert!(!too_many_resets(249, 249));
        assert!(too_many_resets(250, 250));
        assert!(!too_many_resets(300, 1000), "under half of 1000 streams");
        assert!(too_many_resets(500, 1000));
    }

    fn policy(max_control_frames: u32) -> Policy {
        Policy::new(Limits {
            max_control_frames,
            head_timeout: None,
            http: Arc::new(HttpStats::new(Arc::from("t"))),
            http2: Arc::default(),
        })
    }

    fn f(kind: u8, flags: u8, stream: u32, code: Option<u32>) -> Frame {
        Frame {
            kind,
            flags,
            stream,
            code,
            rapid_reset: false,
        }
    }

    #[test]
    fn h2s_own_rapid_reset_goaway_is_recognised() {
        let mut payload = vec![0, 0, 0, 41, 0, 0, 0, 11];
        payload.extend(H2_TOO_MANY_RESETS);
        let mut bytes = frame(GOAWAY, 0, 0, &payload);
        bytes.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 11, b'x']));
        let got = frames_of(&bytes, 4);
        assert!(got[0].rapid_reset);
        assert_eq!((got[1].code, got[1].rapid_reset), (Some(11), false));
        let mut p = policy(10);
        p.outbound(got[0]);
        p.outbound(got[1]);
        assert_eq!(
            p.limits.http.downstream_rq_too_many_premature_resets.get(),
            1
        );
        assert_eq!(p.limits.http.downstream_cx_protocol_error.get(), 1);
    }

    #[test]
    fn reset_streams_count_until_the_rule_trips() {
        let mut p = policy(1000);
        let mut tripped = None;
        for i in 0..1000u32 {
            let s = 2 * i + 1;
            assert_eq!(p.inbound(f(HEADERS, 0x5, s, None)), None);
            if let Some(a) = p.inbound(f(RST_STREAM, 0, s, Some(8))) {
                tripped = Some((i, a));
                break;
            }
        }
        assert_eq!(tripped, Some((249, Abuse::PrematureResets)));
        assert_eq!(p.limits.http2.rx_reset.get(), 250);
    }

    #[test]
    fn resets_with_no_error_or_of_unopened_streams_do_not_count() {
        let mut p = policy(1000);
        for i in 0..1000u32 {
            let s = 2 * i + 1;
            p.inbound(f(HEADERS, 0x5, s, None));
            assert_eq!(p.inbound(f(RST_STREAM, 0, s, Some(0))), None);
            assert_eq!(p.inbound(f(RST_STREAM, 0, s + 1000, Some(8))), None);
        }
    }

    #[test]
    fn control_frames_beyond_the_limit_trip_but_acks_do_not() {
        let mut p = policy(10);
        for _ in 0..100 {
            assert_eq!(p.inbound(f(PING, ACK, 0, None)), None);
        }
        for _ in 0..10 {
            assert_eq!(p.inbound(f(PING, 0, 0, None)), None);
        }
        assert_eq!(
            p.inbound(f(SETTINGS, 0, 0, None)),
            Some(Abuse::ControlFlood)
        );
    }

    #[test]
    fn outbound_resets_and_error_goaways_are_counted() {
        let mut p = policy(10);
        p.outbound(f(RST_STREAM, 0, 1, Some(7)));
        p.outbound(f(GOAWAY, 0, 0, Some(0)));
        p.outbound(f(GOAWAY, 0, 0, Some(11)));
        assert_eq!(p.limits.http2.tx_reset.get(), 1);
        assert_eq!(p.limits.http.downstream_cx_protocol_error.get(), 1);
    }

    #[tokio::test]
    async fn a_flood_closes_the_connection_and_http1_passes_untouched() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let limits = || Limits {
            max_control_frames: 5,
            head_timeout: None,
            http: Arc::new(HttpStats::new(Arc::from("t"))),
            http2: Arc::default(),
        };
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut g = H2Guard::new(server, Some(limits()));
        let mut flood = PREFACE.to_vec();
        for _ in 0..10 {
            flood.extend(frame(PING, 0, 0, &[1; 8]));
        }
        client
            .write_all(&flood)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut buf = vec![0; 1 << 16];
        let err = g.read(&mut buf).await.expect_err("the flood is refused");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        let counted = g
            .policy
            .as_ref()
            .map(|p| p.limits.http2.outbound_control_flood.get());
        assert_eq!(counted, Some(1));

        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut g = H2Guard::new(server, Some(limits()));
        let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        client
            .write_all(request)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let n = g.read(&mut buf).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&buf[..n], request);
        assert!(matches!(g.state, State::Off));
    }
}
