//! A guard on the downstream bytes against HTTP/1 request smuggling.
//!
//! When a request carries both `Content-Length` and `Transfer-Encoding`,
//! hyper drops the length and reads the body as chunked, and the proxy never
//! sees that the request was ambiguous; Envoy refuses it with 400 and so must
//! we. The guard follows request framing on the bytes on their way into hyper
//! and, where a request must be refused, changes them so that hyper's own
//! parser fails on that request's head and answers 400: nothing of it is
//! handed to the proxy, so nothing of it can be forwarded.
//!
//! It relies on hyper refusing a head with a bad header name, which holds as
//! long as `ignore_invalid_headers` stays off for downstream connections.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::head_timer::HeadTimer;

/// Ends a head that hyper has not seen the end of yet so that hyper parses it
/// at once and fails: the NUL sits where the blank line's LF or a header name
/// must be, and the blank line after it satisfies hyper's end-of-head scan.
const POISON_TAIL: &[u8] = b"\x00\n\n";

/// Refused both in a header name and wherever hyper's chunk decoder expects a
/// size digit, CR or LF.
const BAD: u8 = 0;

/// The downstream stream with HTTP/1 request framing followed on reads.
#[derive(Debug)]
pub struct H1Guard<T> {
    inner: T,
    framer: Framer,
    head_timer: Option<HeadTimer>,
}

impl<T> H1Guard<T> {
    /// `guard` is false for connections that can only speak HTTP/2, which
    /// then pay one branch per read.
    pub fn new(inner: T, guard: bool) -> H1Guard<T> {
        let state = if guard { State::Idle } else { State::Off };
        H1Guard {
            inner,
            framer: Framer { state },
            head_timer: None,
        }
    }

    /// Enforces `request_headers_timeout` on each request head.
    pub fn with_head_timer(mut self, timer: Option<HeadTimer>) -> H1Guard<T> {
        self.head_timer = timer;
        self
    }
}

/// Writing is needed for the head timer's 408.
impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for H1Guard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.framer.state {
            State::Off => return Pin::new(&mut this.inner).poll_read(cx, buf),
            State::Poison(_) => {
                this.framer.emit_poison(buf);
                return Poll::Ready(Ok(()));
            }
            _ => {}
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if read.is_pending() {
            let timer = this.head_timer.as_mut();
            if let Some(e) = timer.and_then(|t| t.poll_expired(&mut this.inner, cx)) {
                return Poll::Ready(Err(e));
            }
        }
        ready!(read)?;
        this.framer.inspect(buf, before);
        if let Some(t) = this.head_timer.as_mut() {
            t.track(matches!(this.framer.state, State::Head(_)));
        }
        Poll::Ready(Ok(()))
    }
}

/// Writes are the proxy's responses: nothing to follow there but whether
/// they reached the socket, for the head timer's 408.
impl<T: AsyncWrite + Unpin> AsyncWrite for H1Guard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let (Some(t), Poll::Ready(Ok(n))) = (this.head_timer.as_mut(), &r) {
            t.wrote(*n);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let (Some(t), Poll::Ready(Ok(n))) = (this.head_timer.as_mut(), &r) {
            t.wrote(*n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        if let (Some(t), Poll::Ready(Ok(()))) = (this.head_timer.as_mut(), &r) {
            t.flushed();
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[derive(Debug)]
struct Framer {
    state: State,
}

#[derive(Debug)]
enum State {
    /// Between requests, where httparse skips empty lines.
    Idle,
    Head(Head),
    /// Content-Length bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// The rest of [`POISON_TAIL`], for a read buffer too small to take it
    /// whole; handed out before the socket is read again.
    Poison(&'static [u8]),
    /// Nothing more to follow: the connection switched protocol, or hyper
    /// fails on what it already has and closes.
    Off,
}

impl Framer {
    fn emit_poison(&mut self, buf: &mut ReadBuf<'_>) {
        if let State::Poison(rest) = self.state {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.state = match &rest[n..] {
                [] => State::Off,
                left => State::Poison(left),
            };
        }
    }

    /// Follows the bytes a read added after `from`; when a request must be
    /// refused after its head ended in this very read, everything from the
    /// head's last byte on is replaced by [`POISON_TAIL`].
    fn inspect(&mut self, buf: &mut ReadBuf<'_>, from: usize) {
        if let Some(cut) = self.scan(&mut buf.filled_mut()[from..]) {
            buf.set_filled(from + cut);
            self.emit_poison(buf);
        }
    }

    /// Returns where to cut the read to poison the head that ended in it.
    fn scan(&mut self, bytes: &mut [u8]) -> Option<usize> {
        let mut i = 0;
        // The last byte of the latest head that ended in this read: until
        // hyper has that byte the head can still be made to fail.
        let mut head_end = None;
        while i < bytes.len() {
            match &mut self.state {
                State::Off | State::Poison(_) => break,
                State::Idle => match bytes[i..].iter().position(|b| !matches!(b, b'\r' | b'\n')) {
                    Some(n) => {
                        i += n;
                        self.state = State::Head(Head::default());
                    }
                    None => break,
                },
                State::Length(left) => {
                    i += skip(left, bytes.len() - i);
                    if *left == 0 {
                        self.state = State::Idle;
                    }
                }
                State::Chunked(Chunk::Data(left)) => {
                    i += skip(left, bytes.len() - i);
                    if *left == 0 {
                        self.state = State::Chunked(Chunk::DataCr);
                    }
                }
                State::Head(head) => {
                    if let Some(colon) = head.dull() {
                        let stop = |&b: &u8| b == b'\n' || (colon && b == b':');
                        match bytes[i..].iter().position(stop) {
                            Some(n) => i += n,
                            None => break,
                        }
                    }
                    match head.byte(bytes[i]) {
                        Next::More => {}
                        Next::Corrupt => {
                            // The head has not ended, so hyper has not parsed
                            // it: a bad name byte is enough.
                            bytes[i] = BAD;
                            self.state = State::Off;
                        }
                        Next::Poison => {
                            self.state = State::Poison(POISON_TAIL);
                            return Some(i);
                        }
                        Next::End(next) => {
                            head_end = Some(i);
                            self.state = next;
                        }
                    }
                    i += 1;
                }
                State::Chunked(chunk) => {
                    match chunk.byte(bytes[i]) {
                        Ok(Some(next)) => *chunk = next,
                        Ok(None) => self.state = State::Idle,
                        Err(()) => {
                            if let Some(end) = head_end {
                                self.state = State::Poison(POISON_TAIL);
                                return Some(end);
                            }
                            // hyper already has the head and hands the body
                            // to the proxy as it decodes it; its decoder
                            // refuses this byte too, and the NUL keeps that
                            // so should the two grammars ever drift. In an
                            // extension the offending byte is the LF itself.
                            if !matches!(chunk, Chunk::Ext(_)) {
                                bytes[i] = BAD;
                            }
                            self.state = State::Off;
                        }
                    }
                    i += 1;
                }
            }
        }
        None
    }
}

/// Moves past up to `avail` bytes of a counted body; returns how many.
fn skip(left: &mut u64, avail: usize) -> usize {
    let n = usize::try_from(*left).map_or(avail, |l| l.min(avail));
    // `n` is at most `*left`, so this cannot underflow.
    *left -= n as u64;
    n
}

/// Request line prefixes that end the guard's work: a CONNECT tunnel, or
/// the HTTP/2 preface that `auto::Builder` answers as h2c on this socket.
const LINES: [&[u8]; 2] = [b"CONNECT ", b"PRI * HTTP/2.0\r"];
const CONNECT: usize = 0;
const PRI: usize = 1;

/// Header names, lowercase, that decide framing or a protocol switch.
const NAMES: [&[u8]; 3] = [b"content-length", b"transfer-encoding", b"upgrade"];
const CONTENT_LENGTH: usize = 0;
const TRANSFER_ENCODING: usize = 1;
const UPGRADE: usize = 2;

/// Drops the candidates that `b`, at `pos`, does not continue.
fn narrow(alive: u8, pos: usize, b: u8, set: &[&[u8]]) -> u8 {
    let mut out = 0;
    for (i, c) in set.iter().enumerate() {
        if alive & (1 << i) != 0 && c.get(pos) == Some(&b) {
            out |= 1 << i;
        }
    }
    out
}

/// The candidate matched whole by the `pos` bytes seen so far.
fn matched(alive: u8, pos: usize, set: &[&[u8]]) -> Option<usize> {
    (0..set.len()).find(|&i| alive & (1 << i) != 0 && set[i].len() == pos)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    RequestLine,
    LineStart,
    LineStartCr,
    Name,
    Value,
}

#[derive(Debug, PartialEq, Eq)]
enum Value {
    Skip,
    Length(Digits),
    Coding(Coding),
}

#[derive(Debug)]
struct Head {
    at: At,
    /// Bytes into the request line or the current header name.
    pos: usize,
    /// Candidates of [`LINES`] or [`NAMES`] still matching, one bit each.
    alive: u8,
    value: Value,
    connect: bool,
    upgrade: bool,
    has_length: bool,
    length: Option<u64>,
    /// A Content-Length hyper refuses: unparsable, or two that differ.
    bad_length: bool,
    te: bool,
    /// hyper's reading: the last Transfer-Encoding line ends in `chunked`.
    te_chunked: bool,
}

impl Default for Head {
    fn default() -> Head {
        Head {
            at: At::RequestLine,
            pos: 0,
            alive: (1 << LINES.len()) - 1,
            value: Value::Skip,
            connect: false,
            upgrade: false,
            has_length: false,
            length: None,
            bad_length: false,
            te: false,
            te_chunked: false,
        }
    }
}

enum Next {
    More,
    /// The current byte, a colon, must become a bad name byte.
    Corrupt,
    /// The head ended with the current byte and hyper must refuse it.
    Poison,
    /// The head ended with the current byte; the state for what follows.
    End(State),
}

impl Head {
    /// When the bytes up to the next LF (or colon, if the flag says so)
    /// cannot change anything, so that a scan may jump over them: most of a
    /// head is names and values that decide nothing.
    fn dull(&self) -> Option<bool> {
        match self.at {
            At::RequestLine if self.alive == 0 => Some(false),
            At::Name if self.alive == 0 => Some(true),
            At::Value if self.value == Value::Skip => Some(false),
            _ => None,
        }
    }

    fn byte(&mut self, b: u8) -> Next {
        match self.at {
            At::RequestLine => {
                if b == b'\n' {
                    if matched(self.alive, self.pos, &LINES) == Some(PRI) {
                        return Next::End(State::Off);
                    }
                    self.at = At::LineStart;
                } else {
                    self.alive = narrow(self.alive, self.pos, b, &LINES);
                    self.pos = self.pos.saturating_add(1);
                    if matched(self.alive, self.pos, &LINES) == Some(CONNECT) {
                        self.connect = true;
                    }
                }
            }
            At::LineStart | At::LineStartCr => match b {
                b'\n' => return self.end(),
                b'\r' if self.at == At::LineStart => self.at = At::LineStartCr,
                _ => {
                    self.at = At::Name;
                    self.pos = 0;
                    self.alive = (1 << NAMES.len()) - 1;
                    return self.name_byte(b);
                }
            },
            At::Name => return self.name_byte(b),
            At::Value => {
                if b == b'\n' {
                    self.end_field();
                    self.at = At::LineStart;
                } else {
                    self.value.feed(b);
                }
            }
        }
        Next::More
    }

    fn name_byte(&mut self, b: u8) -> Next {
        match b {
            b':' => {
                self.value = match matched(self.alive, self.pos, &NAMES) {
                    Some(CONTENT_LENGTH) if self.te => return Next::Corrupt,
                    Some(TRANSFER_ENCODING) if self.has_length => return Next::Corrupt,
                    Some(CONTENT_LENGTH) => {
                        self.has_length = true;
                        Value::Length(Digits::Lead)
                    }
                    Some(TRANSFER_ENCODING) => {
                        self.te = true;
                        Value::Coding(Coding::default())
                    }
                    Some(UPGRADE) => {
                        self.upgrade = true;
                        Value::Skip
                    }
                    _ => Value::Skip,
                };
                self.at = At::Value;
            }
            // A line without a colon: hyper refuses the head by itself.
            b'\n' => self.at = At::LineStart,
            _ => {
                self.alive = narrow(self.alive, self.pos, b.to_ascii_lowercase(), &NAMES);
                self.pos = self.pos.saturating_add(1);
            }
        }
        Next::More
    }

    fn end_field(&mut self) {
        match std::mem::replace(&mut self.value, Value::Skip) {
            Value::Skip => {}
            Value::Length(d) => match (d.value(), self.length) {
                (Some(n), None) => self.length = Some(n),
                (Some(n), Some(prev)) if n == prev => {}
                _ => self.bad_length = true,
            },
            Value::Coding(c) => self.te_chunked = c.is_chunked(),
        }
    }

    fn end(&self) -> Next {
        // Content-Length with Transfer-Encoding never gets here: it is
        // corrupted at the second name's colon.
        Next::End(if self.bad_length || (self.te && !self.te_chunked) {
            return Next::Poison;
        } else if self.upgrade || self.connect {
            // What follows is the tunnel if the proxy answers 101 (or 2xx to
            // CONNECT); otherwise conn.rs closes the connection after the
            // response, so no further request is read unguarded.
            State::Off
        } else if self.te {
            State::Chunked(Chunk::Start)
        } else {
            match self.length {
                Some(n) if n > 0 => State::Length(n),
                _ => State::Idle,
            }
        })
    }
}

impl Value {
    fn feed(&mut self, b: u8) {
        match self {
            Value::Skip => {}
            Value::Length(d) => *d = d.feed(b),
            Value::Coding(c) => c.feed(b),
        }
    }
}

/// A Content-Length value as hyper reads it: decimal digits between
/// optional blanks, and no larger than hyper's largest body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Digits {
    Lead,
    In(u64),
    Trail(u64),
    Bad,
}

impl Digits {
    fn feed(self, b: u8) -> Digits {
        match (self, b) {
            (Digits::Lead, b' ' | b'\t') => Digits::Lead,
            (Digits::Lead, b'0'..=b'9') => Digits::In(u64::from(b - b'0')),
            (Digits::In(n), b'0'..=b'9') => n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(b - b'0')))
                .filter(|&n| n <= u64::MAX - 2)
                .map_or(Digits::Bad, Digits::In),
            (Digits::In(n) | Digits::Trail(n), b' ' | b'\t' | b'\r') => Digits::Trail(n),
            _ => Digits::Bad,
        }
    }

    fn value(self) -> Option<u64> {
        match self {
            Digits::In(n) | Digits::Trail(n) => Some(n),
            Digits::Lead | Digits::Bad => None,
        }
    }
}

/// Whether a Transfer-Encoding line's last listed coding is `chunked`, the
/// test hyper applies (to visible ASCII only).
#[derive(Debug, Default, PartialEq, Eq)]
struct Coding {
    elem: Elem,
    not_ascii: bool,
}

/// Where in the current list element the line is.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Elem {
    #[default]
    Lead,
    /// Bytes of `chunked` matched so far.
    Word(usize),
    /// Blanks after the whole word.
    Trail,
    Other,
}

impl Coding {
    const WORD: &'static [u8] = b"chunked";

    fn feed(&mut self, b: u8) {
        if b == b',' {
            self.elem = Elem::Lead;
            return;
        }
        if !(b == b'\t' || b == b'\r' || (b' '..=b'~').contains(&b)) {
            self.not_ascii = true;
        }
        let blank = matches!(b, b' ' | b'\t' | b'\r');
        let so_far = match self.elem {
            Elem::Lead => Some(0),
            Elem::Word(n) => Some(n),
            Elem::Trail | Elem::Other => None,
        };
        self.elem = match self.elem {
            Elem::Lead if blank => Elem::Lead,
            Elem::Word(n) if n == Self::WORD.len() && blank => Elem::Trail,
            Elem::Trail if blank => Elem::Trail,
            _ => match so_far {
                Some(n) if Self::WORD.get(n) == Some(&b.to_ascii_lowercase()) => Elem::Word(n + 1),
                _ => Elem::Other,
            },
        };
    }

    fn is_chunked(&self) -> bool {
        !self.not_ascii && matches!(self.elem, Elem::Trail | Elem::Word(7))
    }
}

/// hyper's chunked decoder states, with the same grammar, so that the two
/// never disagree on where a chunked body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Start,
    Size(u64),
    Lws(u64),
    Ext(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

impl Chunk {
    /// The next state, `None` at the body's end, `Err` where hyper's decoder
    /// fails.
    fn byte(self, b: u8) -> Result<Option<Chunk>, ()> {
        if let (Chunk::Start | Chunk::Size(_), Some(d)) = (self, hex(b)) {
            let n = match self {
                Chunk::Size(n) => n,
                _ => 0,
            };
            let n = n.checked_mul(16).and_then(|n| n.checked_add(d)).ok_or(())?;
            return Ok(Some(Chunk::Size(n)));
        }
        let next = match (self, b) {
            (Chunk::Size(n) | Chunk::Lws(n), b' ' | b'\t') => Chunk::Lws(n),
            (Chunk::Size(n) | Chunk::Lws(n), b';') => Chunk::Ext(n),
            (Chunk::Size(n) | Chunk::Lws(n) | Chunk::Ext(n), b'\r') => Chunk::SizeLf(n),
            (Chunk::Ext(_), b'\n') => return Err(()),
            (Chunk::Ext(n), _) => Chunk::Ext(n),
            (Chunk::SizeLf(0), b'\n') => Chunk::EndCr,
            (Chunk::SizeLf(n), b'\n') => Chunk::Data(n),
            (Chunk::DataCr, b'\r') => Chunk::DataLf,
            (Chunk::DataLf, b'\n') => Chunk::Start,
            (Chunk::EndCr, b'\r') => Chunk::EndLf,
            (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
            (Chunk::EndCr | Chunk::Trailer, _) => Chunk::Trailer,
            (Chunk::TrailerLf, b'\n') => Chunk::EndCr,
            (Chunk::EndLf, b'\n') => return Ok(None),
            _ => return Err(()),
        };
        Ok(Some(next))
    }
}

fn hex(b: u8) -> Option<u64> {
    char::from(b).to_digit(16).map(u64::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::Waker;

    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;

    /// Hands out one scripted chunk per read, then stays pending, as a
    /// client that sent everything and waits would; records what is written.
    struct Script {
        chunks: VecDeque<Vec<u8>>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Script {
        fn new(chunks: &[&[u8]]) -> Script {
            Script {
                chunks: chunks
                    .iter()
                    .filter(|c| !c.is_empty())
                    .map(|c| c.to_vec())
                    .collect(),
                written: Arc::default(),
            }
        }
    }

    impl AsyncRead for Script {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let Some(mut chunk) = this.chunks.pop_front() else {
                return Poll::Pending;
            };
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            if n < chunk.len() {
                chunk.drain(..n);
                this.chunks.push_front(chunk);
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Script {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.written.lock().expect("lock").extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// What hyper would read through the guard, in reads of `cap` bytes.
    fn through(chunks: &[&[u8]], cap: usize) -> (Vec<u8>, H1Guard<Script>) {
        let mut g = H1Guard::new(Script::new(chunks), true);
        let mut out = Vec::new();
        let mut cx = Context::from_waker(Waker::noop());
        let mut storage = vec![0u8; cap];
        loop {
            let mut buf = ReadBuf::new(&mut storage);
            match Pin::new(&mut g).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    out.extend_from_slice(buf.filled())
                }
                _ => return (out, g),
            }
        }
    }

    /// Every way of cutting `input` into two reads.
    fn splits(input: &[u8]) -> impl Iterator<Item = [&[u8]; 2]> {
        (0..=input.len()).map(move |i| [&input[..i], &input[i..]])
    }

    #[derive(Debug, Default)]
    struct Served {
        written: String,
        /// Requests handed to the service.
        requests: usize,
        /// Bodies read to the end without error.
        bodies: Vec<Vec<u8>>,
    }

    /// Runs hyper's HTTP/1 server over the guard on scripted reads.
    fn serve(chunks: &[&[u8]]) -> Served {
        let script = Script::new(chunks);
        let written = script.written.clone();
        let requests = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (r, b) = (requests.clone(), bodies.clone());
        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            r.fetch_add(1, Ordering::SeqCst);
            let b = b.clone();
            async move {
                if let Ok(body) = req.into_body().collect().await {
                    b.lock().expect("lock").push(body.to_bytes().to_vec());
                }
                Ok::<_, Infallible>(hyper::Response::new(Empty::<Bytes>::new()))
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(H1Guard::new(script, true)), svc);
        let mut conn = Box::pin(conn);
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..64 {
            if conn.as_mut().poll(&mut cx).is_ready() {
                break;
            }
        }
        let written = String::from_utf8_lossy(&written.lock().expect("lock")).into_owned();
        let bodies = bodies.lock().expect("lock").clone();
        Served {
            written,
            requests: requests.load(Ordering::SeqCst),
            bodies,
        }
    }

    const CLEAN: &[u8] = b"\r\nGET /a HTTP/1.1\r\nHost: a\r\n\r\n\
        POST /b HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello\
        POST /c HTTP/1.1\nHost: a\nTransfer-Encoding: gzip ,  Chunked \n\n\
        3;name=\"v;x\"\r\nabc\r\nA \t; e\r\n0123456789\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n\
        GET /d HTTP/1.1\r\nX-Transfer-Encoding: chunked\r\nContent-Lengthy: 3\r\n\r\n";

    #[test]
    fn clean_traffic_passes_untouched_at_every_split() {
        for parts in splits(CLEAN) {
            let (out, g) = through(&parts, 64);
            assert_eq!(out, CLEAN);
            assert!(
                matches!(g.framer.state, State::Idle),
                "{:?}",
                g.framer.state
            );
        }
        let (out, _) = through(&[CLEAN], 1);
        assert_eq!(out, CLEAN);
    }

    #[test]
    fn hyper_serves_clean_traffic_through_the_guard() {
        let s = serve(&[CLEAN]);
        assert_eq!(s.requests, 4, "{s:?}");
        assert_eq!(s.written.matches("HTTP/1.1 200 OK").count(), 4, "{s:?}");
        assert_eq!(s.bodies[1], b"hello");
        assert_eq!(s.bodies[2], b"abc0123456789");
    }

    const SMUGGLING: &[&[u8]] = &[
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\ncontent-length: 0\r\ntransfer-encoding: CHUNKED\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTRANSFER-ENCODING: gzip, chunked\r\nCONTENT-LENGTH: 4\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n",
        b"POST / HTTP/1.1\nContent-Length: 4\nX: y\ntRaNsFeR-eNcOdInG: chunked\n\n0\n\n",
        b"POST / HTTP/1.0\r\nContent-Length:3\r\nTransfer-Encoding:chunked\r\n\r\nabc",
    ];

    #[test]
    fn content_length_with_transfer_encoding_gets_400_at_every_split() {
        for case in SMUGGLING {
            for parts in splits(case) {
                let s = serve(&parts);
                assert!(
                    s.written.starts_with("HTTP/1.1 400 "),
                    "{:?} split {:?}: {s:?}",
                    String::from_utf8_lossy(case),
                    parts[0].len()
                );
                assert_eq!(s.requests, 0);
            }
        }
    }

    #[test]
    fn smuggling_after_a_clean_request_is_refused_but_the_first_is_served() {
        let mut input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        input.extend_from_slice(SMUGGLING[0]);
        let s = serve(&[&input]);
        assert_eq!(s.requests, 1, "{s:?}");
        assert!(s.written.starts_with("HTTP/1.1 200 OK"), "{s:?}");
        assert!(s.written.contains("HTTP/1.1 400 "), "{s:?}");
    }

    const BAD_CHUNKS: &[&[u8]] = &[
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext\nabc\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1 2\r\na\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\rY\r\n\r\n",
    ];

    #[test]
    fn bad_chunked_framing_in_the_heads_read_gets_400() {
        for case in BAD_CHUNKS {
            let s = serve(&[case]);
            assert!(
                s.written.starts_with("HTTP/1.1 400 "),
                "{:?}: {s:?}",
                String::from_utf8_lossy(case)
            );
            assert_eq!(s.requests, 0);
        }
    }

    #[test]
    fn bad_chunked_framing_after_the_head_fails_the_body() {
        for case in BAD_CHUNKS {
            let at = case
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(0, |p| p + 4);
            let s = serve(&[&case[..at], &case[at..]]);
            assert!(
                s.bodies.is_empty(),
                "{:?}: {s:?}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[test]
    fn poison_spills_over_reads_too_small_for_it() {
        let case = BAD_CHUNKS[0];
        let head = case
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |p| p + 4);
        // The read that ends the head holds its last byte and one body byte.
        let (out, g) = through(&[&case[..head - 1], &case[head - 1..]], 2);
        assert_eq!(&out[..head - 1], &case[..head - 1]);
        assert_eq!(&out[head - 1..head + 2], POISON_TAIL);
        assert!(matches!(g.framer.state, State::Off));
    }

    #[test]
    fn framing_headers_that_hyper_refuses_are_poisoned() {
        for case in [
            &b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"[..],
            b"POST / HTTP/1.1\r\nContent-Length: +4\r\n\r\nabcd",
            b"POST / HTTP/1.1\r\nContent-Length: 4, 4\r\n\r\nabcd",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n",
        ] {
            let (out, _) = through(&[case], 4096);
            assert!(
                out.ends_with(POISON_TAIL),
                "{:?}",
                String::from_utf8_lossy(case)
            );
            let s = serve(&[case]);
            assert!(s.written.starts_with("HTTP/1.1 400 "), "{s:?}");
            assert_eq!(s.requests, 0);
        }
    }

    #[test]
    fn stops_at_a_protocol_switch() {
        let tunnel = b"\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        for head in [
            &b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUPGRADE: websocket\r\n\r\n"[..],
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            let input = [head, &tunnel[..]].concat();
            for parts in splits(&input) {
                let (out, g) = through(&parts, 64);
                assert_eq!(out, input);
                assert!(matches!(g.framer.state, State::Off));
            }
        }
        // A method that merely starts like CONNECT is not a tunnel.
        let (_, g) = through(&[b"CONNECTX / HTTP/1.1\r\n\r\n"], 64);
        assert!(matches!(g.framer.state, State::Idle));
    }

    #[test]
    fn random_input_never_panics() {
        let alphabet: &[&[u8]] = &[
            b"\r",
            b"\n",
            b"\r\n",
            b":",
            b" ",
            b";",
            b",",
            b"0",
            b"5",
            b"f",
            b"z",
            b"\x00",
            b"\xff",
            b"chunked",
            b"Content-Length",
            b"Transfer-Encoding",
            b"Upgrade",
            b"POST / HTTP/1.1\r\n",
            b"CONNECT ",
            b"PRI * HTTP/2.0\r\n",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..3000 {
            let mut input = Vec::new();
            for _ in 0..next() % 80 {
                if next() % 4 == 0 {
                    input.push(next() as u8);
                } else {
                    input.extend_from_slice(alphabet[(next() % alphabet.len() as u64) as usize]);
                }
            }
            let cut = (next() as usize) % (input.len() + 1);
            let cap = 1 + (next() as usize) % 40;
            let _ = through(&[&input[..cut], &input[cut..]], cap);
        }
    }
}
