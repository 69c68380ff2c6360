//! The downstream HTTP/1.1 connection loop. Between keep-alive requests it
//! holds no buffer: it waits on the socket with a read into the stack, and
//! takes a buffer only once bytes arrive; the buffer is dropped again when a
//! response is out and nothing pipelined is left. Requests are read, handed
//! to the service and answered one at a time, so pipelined requests are
//! answered in order.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, Method, Request, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use super::body::{BodyError, Decoded, Decoder, Framing};
use super::head::{self, RequestError, RequestHead};
use super::write::Writer;
use crate::body::{self, Body, BoxError};
use crate::drain::Watch;
use crate::stats::HttpStats;

/// The first read of an idle connection lands here, then moves to the heap.
const FIRST_READ: usize = 2048;
/// Reads while a request is read take this much room at least.
const READ_SIZE: usize = 8 * 1024;
/// An unread request body up to this size is read and dropped after the
/// response so the connection can be kept; a larger one closes it.
const MAX_DRAIN: usize = 64 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// The HTTP/2 connection preface's request line.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
/// Envoy's answer to a late head, byte for byte in status, body and
/// `connection: close`.
const HEAD_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 22\r\n\
content-type: text/plain\r\nconnection: close\r\n\r\nrequest header timeout";

/// Per-connection settings from the connection manager.
pub struct Settings {
    pub max_headers: usize,
    /// `max_request_headers_kb` in bytes.
    pub max_header_bytes: usize,
    /// `request_headers_timeout`: first byte of a head to its end.
    pub head_timeout: Option<Duration>,
    /// Take the HTTP/2 preface as h2c prior knowledge (`codec_type: AUTO`).
    pub detect_h2: bool,
    pub drain_time: Duration,
}

/// What ends an idle wait: the process shutting down, this listener
/// draining (then closing after `drain_time`).
pub struct Signals<'a> {
    pub shutdown: &'a mut Watch,
    pub drain: &'a mut Watch,
    /// Set while the connection drains: answers say `Connection: close`.
    pub closing: &'a AtomicBool,
}

/// How the loop ended.
pub enum Ended<S> {
    Closed,
    /// The client opened with the HTTP/2 preface: these bytes and the
    /// stream go to the HTTP/2 server.
    Http2(Bytes, S),
}

/// Either side of a tunnel after a switch of protocols.
pub trait Tunnel: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Tunnel for T {}

/// The downstream stream after a 101 (or a 2xx to CONNECT), with the bytes
/// the client sent past the request head.
pub type Upgraded = Box<dyn Tunnel>;

/// In a request that may switch protocols: resolves to the downstream
/// stream once the switching response is written.
#[derive(Clone)]
pub struct OnUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl OnUpgrade {
    pub async fn wait(self) -> Option<Upgraded> {
        let rx = self.0.lock().ok()?.take()?;
        rx.await.ok()
    }
}

/// The socket and what was read from it, shared between the loop and the
/// request body (which an upstream may read from another task). Uncontended:
/// the loop writes while the body reads only within one request.
struct Transport<S> {
    io: S,
    buf: BytesMut,
    /// The body being read, with the number of its request.
    body: Option<(u64, Decoder)>,
    /// Bytes of `100 Continue` still to write before the body is read.
    continue_left: usize,
}

type Shared<S> = Arc<Mutex<Transport<S>>>;

fn lock<S>(t: &Shared<S>) -> io::Result<std::sync::MutexGuard<'_, Transport<S>>> {
    t.lock()
        .map_err(|_| io::Error::other("connection state poisoned"))
}

/// Serves requests on `io` until the client or a signal ends it.
pub async fn serve<S, F, Fut>(
    io: S,
    settings: &Settings,
    stats: &HttpStats,
    signals: Signals<'_>,
    mut service: F,
) -> io::Result<Ended<S>>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    F: FnMut(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let shared: Shared<S> = Arc::new(Mutex::new(Transport {
        io,
        buf: BytesMut::new(),
        body: None,
        continue_left: 0,
    }));
    let mut number: u64 = 0;
    let mut first = true;
    // Bytes of the next request already read with this one's.
    let mut pipelined = false;
    let shutting_down = signals.shutdown.clone();
    // Watched for the connection's life rather than per idle wait, which
    // would join and leave each signal's waiter list for every request.
    let mut watch = Watched {
        shutdown: std::pin::pin!(signals.shutdown.signaled()),
        drain: std::pin::pin!(signals.drain.signaled()),
        closing: signals.closing,
    };
    loop {
        // Idle: nothing buffered, wait for the next request's first bytes.
        if !pipelined && !idle_wait(&shared, &mut watch, settings.drain_time).await? {
            return Ok(Ended::Closed);
        }
        if first && settings.detect_h2 && starts_h2(&shared).await? {
            let t = unshare(shared)?;
            return Ok(Ended::Http2(t.buf.freeze(), t.io));
        }
        first = false;
        number += 1;
        // Each step's values live in a block that ends before the next
        // await: the connection's future then holds the step in progress,
        // not the moved-from values of the steps before it.
        let exchange: Exchange;
        let (mut writer, close, switched) = {
            let response = {
                let Some((request, x)) = read_request(&shared, settings, stats, number).await?
                else {
                    return Ok(Ended::Closed);
                };
                exchange = x;
                service(request)
            }
            .await;
            exchange.writer(response)
        };
        if let Err(e) = write(&shared, &mut writer).await {
            tracing::debug!(error = %e, "downstream response not written");
            return Ok(Ended::Closed);
        }
        if switched {
            if let Some(tx) = exchange.upgrade {
                if let Ok(t) = unshare(shared) {
                    let up = crate::io::Prefixed::new(t.buf.freeze(), t.io);
                    let _ = tx.send(Box::new(up));
                }
            }
            return Ok(Ended::Closed);
        }
        if close || shutting_down.is_signaled() || !drain_body(&shared).await? {
            shutdown(&shared).await;
            return Ok(Ended::Closed);
        }
        let mut t = lock(&shared)?;
        t.body = None;
        pipelined = !t.buf.is_empty();
        if !pipelined {
            t.buf = BytesMut::new();
        }
    }
}

/// What the loop keeps of a request while it is served: how to frame the
/// answer, and where a switched connection goes.
struct Exchange {
    head_request: bool,
    version: http::Version,
    keep_alive: bool,
    may_switch: bool,
    connect: bool,
    upgrade: Option<oneshot::Sender<Upgraded>>,
}

impl Exchange {
    /// The response's writer; whether the connection closes after it, and
    /// whether it switches protocols instead.
    fn writer(&self, response: Response<Body>) -> (Writer, bool, bool) {
        let status = response.status();
        let switched = self.may_switch
            && (status == StatusCode::SWITCHING_PROTOCOLS || (self.connect && status.is_success()));
        let (parts, body) = response.into_parts();
        let (wire, framing) = head::encode_response(
            &parts,
            body.size_hint().exact(),
            body.is_end_stream(),
            self.head_request,
            self.version,
            self.keep_alive && (switched || !self.may_switch),
            &date::now(),
        );
        let body = (!framing.bodiless && !switched).then_some(body);
        (
            Writer::new(wire, body, framing.encoder),
            framing.close,
            switched,
        )
    }
}

/// Reads the next request head and makes it a request whose body reads on
/// from the connection; `None` when the connection is done (the client
/// closed, was too slow, or sent a head the codec refuses, answered here).
async fn read_request<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
    shared: &Shared<S>,
    settings: &Settings,
    stats: &HttpStats,
    number: u64,
) -> io::Result<Option<(Request<Body>, Exchange)>> {
    let head = match read_head(shared, settings, stats).await? {
        Ok(Some(head)) => head,
        Ok(None) => return Ok(None),
        Err(e) => {
            Box::pin(refuse(shared, stats, e)).await;
            return Ok(None);
        }
    };
    let RequestHead {
        mut parts,
        framing,
        keep_alive,
        expect_continue,
    } = head;
    let connect = parts.method == Method::CONNECT;
    let may_switch = connect || parts.headers.contains_key(header::UPGRADE);
    let upgrade = may_switch.then(|| {
        let (tx, rx) = oneshot::channel();
        parts
            .extensions
            .insert(OnUpgrade(Arc::new(Mutex::new(Some(rx)))));
        tx
    });
    let exchange = Exchange {
        head_request: parts.method == Method::HEAD,
        version: parts.version,
        keep_alive,
        may_switch,
        connect,
        upgrade,
    };
    let body = if framing == Framing::Length(0) {
        body::empty()
    } else {
        let mut t = lock(shared)?;
        t.body = Some((number, Decoder::new(framing)));
        t.continue_left = if expect_continue { CONTINUE.len() } else { 0 };
        RequestBody {
            shared: shared.clone(),
            number,
        }
        .boxed_unsync()
    };
    Ok(Some((Request::from_parts(parts, body), exchange)))
}

/// Takes the transport back from a request body that may still hold it.
fn unshare<S>(shared: Shared<S>) -> io::Result<Transport<S>> {
    Arc::try_unwrap(shared)
        .map_err(|_| io::Error::other("request body still in use"))?
        .into_inner()
        .map_err(|_| io::Error::other("connection state poisoned"))
}

/// The signals' futures, polled across idle waits. The drain future is not
/// polled again once it has fired (`closing` is set then).
struct Watched<'a, A, B> {
    shutdown: Pin<&'a mut A>,
    drain: Pin<&'a mut B>,
    closing: &'a AtomicBool,
}

/// Waits for the next request's first bytes without a buffer; false when
/// the connection is to close instead (client gone, shutdown, drain over).
async fn idle_wait<S, A, B>(
    shared: &Shared<S>,
    signals: &mut Watched<'_, A, B>,
    drain_time: Duration,
) -> io::Result<bool>
where
    S: AsyncRead + Unpin,
    A: Future<Output = ()>,
    B: Future<Output = ()>,
{
    let read = std::future::poll_fn(|cx| {
        let mut t = lock(shared)?;
        let mut stack = [const { std::mem::MaybeUninit::<u8>::uninit() }; FIRST_READ];
        let mut rb = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(&mut t.io).poll_read(cx, &mut rb))?;
        let got = rb.filled();
        if !got.is_empty() {
            // Exactly what came: a head read whole is then frozen without a
            // second allocation, and a small buffer is a cheap one; a head
            // that needs more reads grows it by `READ_SIZE`.
            t.buf = BytesMut::from(got);
        }
        Poll::Ready(Ok::<_, io::Error>(!got.is_empty()))
    });
    tokio::pin!(read);
    let mut deadline = None;
    if signals.closing.load(Ordering::Relaxed) {
        deadline = Some(tokio::time::Instant::now() + drain_time);
    }
    loop {
        // Without a deadline there is no timer to make, nor a clock to read.
        let expiry = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut read => return r,
            _ = signals.shutdown.as_mut() => return Ok(false),
            _ = signals.drain.as_mut(), if deadline.is_none() => {
                signals.closing.store(true, Ordering::Relaxed);
                deadline = Some(tokio::time::Instant::now() + drain_time);
            }
            _ = expiry => return Ok(false),
        }
    }
}

/// Reads until the buffer can tell HTTP/2's preface from an HTTP/1 request.
async fn starts_h2<S: AsyncRead + Unpin>(shared: &Shared<S>) -> io::Result<bool> {
    std::future::poll_fn(|cx| loop {
        let mut t = lock(shared)?;
        let n = t.buf.len().min(H2_PREFACE.len());
        if t.buf[..n] != H2_PREFACE[..n] {
            return Poll::Ready(Ok(false));
        }
        if n == H2_PREFACE.len() {
            return Poll::Ready(Ok(true));
        }
        if ready!(poll_fill(&mut t, cx))? == 0 {
            return Poll::Ready(Ok(false));
        }
    })
    .await
}

fn poll_fill<S: AsyncRead + Unpin>(
    t: &mut Transport<S>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if t.buf.capacity() - t.buf.len() < READ_SIZE / 4 {
        t.buf.reserve(READ_SIZE);
    }
    let Transport { io, buf, .. } = t;
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Reads a request head, timing it from its first byte when configured.
/// `Ok(Ok(None))`: the client closed or was too slow (answered 408).
async fn read_head<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared<S>,
    settings: &Settings,
    stats: &HttpStats,
) -> io::Result<Result<Option<RequestHead>, RequestError>> {
    let mut deadline = None;
    loop {
        {
            let mut t = lock(shared)?;
            let parsed =
                head::parse_request(&mut t.buf, settings.max_headers, settings.max_header_bytes);
            match parsed {
                Ok(Some(h)) => return Ok(Ok(Some(h))),
                Ok(None) => {}
                Err(e) => return Ok(Err(e)),
            }
        }
        if let (None, Some(limit)) = (deadline, settings.head_timeout) {
            deadline = Some(tokio::time::Instant::now() + limit);
        }
        let more = std::future::poll_fn(|cx| poll_fill(&mut *lock(shared)?, cx));
        let n = match deadline {
            Some(d) => match tokio::time::timeout_at(d, more).await {
                Ok(r) => r?,
                Err(_) => {
                    stats.downstream_rq_header_timeout.inc();
                    stats.downstream_rq.record(408);
                    late_head(shared);
                    return Ok(Ok(None));
                }
            },
            None => more.await?,
        };
        if n == 0 {
            return Ok(Ok(None));
        }
    }
}

/// The head did not arrive in time: Envoy's 408, best effort.
fn late_head<S: AsyncWrite + Unpin>(shared: &Shared<S>) {
    if let Ok(mut t) = lock(shared) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let _ = Pin::new(&mut t.io).poll_write(&mut cx, HEAD_TIMEOUT);
    }
}

/// Answers a head the codec refuses and closes, as Envoy does.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared<S>,
    stats: &HttpStats,
    e: RequestError,
) {
    // Envoy counts each of them as a codec protocol error.
    let status = match e {
        RequestError::Malformed => 400,
        RequestError::TooManyHeaders | RequestError::TooLarge => 431,
    };
    stats.downstream_rq.record(status);
    stats.downstream_cx_protocol_error.inc();
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let wire = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\ndate: {}\r\nconnection: close\r\n\r\n",
        String::from_utf8_lossy(&date::now())
    );
    let mut w = Writer::new(Bytes::from(wire), None, super::body::Encoder::Length(0));
    let _ = write(shared, &mut w).await;
    shutdown(shared).await;
}

/// Writes a whole response. The body is polled without the transport's
/// lock: it may drive the request body, which takes it.
async fn write<S: AsyncWrite + Unpin>(
    shared: &Shared<S>,
    writer: &mut Writer,
) -> Result<(), super::write::WriteError> {
    std::future::poll_fn(|cx| loop {
        let waiting = writer.gather(cx)?;
        let mut t = lock(shared)?;
        ready!(writer.poll_drain(cx, &mut t.io))?;
        if writer.is_done() {
            return Poll::Ready(Ok(()));
        }
        if waiting {
            let _ = Pin::new(&mut t.io).poll_flush(cx)?;
            return Poll::Pending;
        }
    })
    .await
}

/// Reads what is left of a request body nobody read, so the connection can
/// take the next request; false when it is too large or broken.
async fn drain_body<S: AsyncRead + Unpin>(shared: &Shared<S>) -> io::Result<bool> {
    let mut dropped = 0usize;
    std::future::poll_fn(|cx| loop {
        let mut t = lock(shared)?;
        let Transport { buf, body, .. } = &mut *t;
        let Some((_, decoder)) = body.as_mut() else {
            return Poll::Ready(Ok(true));
        };
        match decoder.decode(buf) {
            Ok(Decoded::End) => return Poll::Ready(Ok(true)),
            Ok(Decoded::Data(d)) => {
                dropped += d.len();
                if dropped > MAX_DRAIN {
                    return Poll::Ready(Ok(false));
                }
            }
            Ok(Decoded::Trailers(_)) => {}
            Ok(Decoded::More) => {
                // Nothing sent and no 100 Continue asked for: the client
                // waits to be told, so there is nothing to drain.
                if t.continue_left > 0 {
                    return Poll::Ready(Ok(false));
                }
                if ready!(poll_fill(&mut t, cx))? == 0 {
                    return Poll::Ready(Ok(false));
                }
            }
            Err(_) => return Poll::Ready(Ok(false)),
        }
    })
    .await
}

async fn shutdown<S: AsyncWrite + Unpin>(shared: &Shared<S>) {
    let done = std::future::poll_fn(|cx| match lock(shared) {
        Ok(mut t) => Pin::new(&mut t.io).poll_shutdown(cx),
        Err(e) => Poll::Ready(Err(e)),
    });
    let _ = tokio::time::timeout(Duration::from_secs(1), done).await;
}

/// A request body read from the connection as the upstream takes it.
struct RequestBody<S> {
    shared: Shared<S>,
    number: u64,
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("request body: {0}")]
    Io(#[from] io::Error),
    #[error("request body: {0}")]
    Framing(#[from] BodyError),
    #[error("request body read after its request ended")]
    Stale,
}

impl<S: AsyncRead + AsyncWrite + Unpin> RequestBody<S> {
    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ReadError>>> {
        let mut t = lock(&self.shared)?;
        match &t.body {
            Some((n, _)) if *n == self.number => {}
            _ => return Poll::Ready(Some(Err(ReadError::Stale))),
        }
        while t.continue_left > 0 {
            let at = CONTINUE.len() - t.continue_left;
            let n = ready!(Pin::new(&mut t.io).poll_write(cx, &CONTINUE[at..]))?;
            if n == 0 {
                return Poll::Ready(Some(Err(io::Error::from(io::ErrorKind::WriteZero).into())));
            }
            t.continue_left -= n;
        }
        loop {
            let Transport { buf, body, .. } = &mut *t;
            let Some((_, decoder)) = body.as_mut() else {
                return Poll::Ready(None);
            };
            match decoder.decode(buf)? {
                Decoded::Data(d) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                Decoded::Trailers(h) => return Poll::Ready(Some(Ok(Frame::trailers(h)))),
                Decoded::End => return Poll::Ready(None),
                Decoded::More => {
                    if ready!(poll_fill(&mut t, cx))? == 0 {
                        let Some((_, decoder)) = t.body.as_mut() else {
                            return Poll::Ready(None);
                        };
                        decoder.eof()?;
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> http_body::Body for RequestBody<S> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.poll_next(cx)
            .map(|f| f.map(|r| r.map_err(|e| Box::new(e) as BoxError)))
    }

    fn is_end_stream(&self) -> bool {
        self.shared.lock().map_or(true, |t| match &t.body {
            Some((n, d)) => *n != self.number || d.is_done(),
            None => true,
        })
    }

    fn size_hint(&self) -> SizeHint {
        let remaining = self.shared.lock().ok().and_then(|t| match &t.body {
            Some((n, d)) if *n == self.number => d.remaining(),
            _ => None,
        });
        remaining.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

impl<S> Unpin for RequestBody<S> {}

/// `date` header values, formatted once a second.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    /// The formatted second, and until when (coarse monotonic ms) it holds.
    struct Cached {
        until_ms: u64,
        value: [u8; 29],
    }

    thread_local! {
        static CACHE: RefCell<Cached> = const {
            RefCell::new(Cached { until_ms: 0, value: [0; 29] })
        };
    }

    /// The `Date` value for this second. Within a second it costs a read of
    /// the coarse monotonic clock, not of the precise wall clock.
    pub fn now() -> [u8; 29] {
        let mono = crate::io::coarse_ms();
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if mono >= c.until_ms {
                let t = SystemTime::now();
                let ms = t
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::from(d.subsec_millis()));
                let s = httpdate::fmt_http_date(t);
                if s.len() == 29 {
                    c.value.copy_from_slice(s.as_bytes());
                    c.until_ms = mono + (1000 - ms);
                }
            }
            c.value
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain::Drain;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn settings() -> Settings {
        Settings {
            max_headers: 100,
            max_header_bytes: 60 * 1024,
            head_timeout: None,
            detect_h2: true,
            drain_time: Duration::from_secs(1),
        }
    }

    /// Serves one connection whose client writes `input` (then half-closes
    /// when `close`), with a service that answers `<method> <path> <body>`;
    /// returns everything the client read until the server closed or went
    /// quiet.
    async fn exchange(input: &[u8], close: bool) -> String {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let settings = settings();
        let drain = Drain::default();
        let stats = HttpStats::new(Arc::from("test"));
        let serving = async {
            let (mut shutdown, mut listener) = (drain.watch(), drain.watch());
            let closing = AtomicBool::new(false);
            let signals = Signals {
                shutdown: &mut shutdown,
                drain: &mut listener,
                closing: &closing,
            };
            let service = |req: Request<Body>| async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                let text = format!(
                    "{} {} {}",
                    parts.method,
                    parts.uri,
                    String::from_utf8_lossy(&body)
                );
                Response::new(body::full(text))
            };
            let _ = serve(server, &settings, &stats, signals, service).await;
        };
        let client_side = async {
            client.write_all(input).await.expect("write");
            if close {
                client.shutdown().await.expect("half-close");
            }
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let read = client.read(&mut buf);
                match tokio::time::timeout(Duration::from_millis(300), read).await {
                    Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        };
        tokio::pin!(client_side);
        tokio::select! {
            out = &mut client_side => out,
            // The server closed: the client reads to the end.
            _ = serving => client_side.await,
        }
    }

    fn bodies(reply: &str) -> Vec<&str> {
        reply
            .split("HTTP/1.1 ")
            .skip(1)
            .map(|r| r.split("\r\n\r\n").nth(1).unwrap_or(""))
            .collect()
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order() {
        let reply = exchange(
            b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nPOST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /three HTTP/1.1\r\nHost: a\r\n\r\n",
            false,
        )
        .await;
        assert_eq!(
            bodies(&reply),
            ["GET /one ", "POST /two abc", "GET /three "],
            "{reply}"
        );
        assert!(!reply.contains("connection: close"), "{reply}");
    }

    #[tokio::test]
    async fn chunked_request_bodies_are_decoded_and_bad_ones_refused() {
        let reply = exchange(
            b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-t: 1\r\n\r\n",
            false,
        )
        .await;
        assert_eq!(bodies(&reply), ["POST /c abcde"], "{reply}");
        let reply = exchange(
            b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n",
            false,
        )
        .await;
        assert!(
            !reply.contains("GET /next"),
            "nothing after a bad chunk: {reply}"
        );
    }

    #[tokio::test]
    async fn framing_smuggling_shapes_get_400_and_close() {
        for case in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Fold: a\r\n b\r\n\r\n",
        ] {
            let reply = exchange(case, false).await;
            assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
            assert!(reply.contains("connection: close"), "{reply}");
            assert_eq!(reply.matches("HTTP/1.1").count(), 1, "{reply}");
        }
    }

    #[tokio::test]
    async fn http10_closes_unless_kept_alive() {
        let reply = exchange(b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n", false).await;
        assert_eq!(
            bodies(&reply),
            ["GET /a "],
            "closed after the first: {reply}"
        );
        let reply = exchange(
            b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n",
            false,
        )
        .await;
        assert!(reply.contains("connection: keep-alive"), "{reply}");
        assert_eq!(bodies(&reply), ["GET /a ", "GET /b "], "{reply}");
    }

    #[tokio::test]
    async fn expect_continue_is_answered_when_the_body_is_read() {
        let reply = exchange(
            b"PUT /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
            false,
        )
        .await;
        assert!(
            reply.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
            "{reply}"
        );
        assert!(reply.ends_with("PUT /e ok"), "{reply}");
    }

    #[tokio::test]
    async fn too_many_headers_get_431() {
        let mut req = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..101 {
            req.extend(format!("x-{i}: v\r\n").bytes());
        }
        req.extend(b"\r\n");
        let reply = exchange(&req, false).await;
        assert!(reply.starts_with("HTTP/1.1 431 "), "{reply}");
    }

    #[tokio::test]
    async fn the_http2_preface_is_handed_over() {
        let (client, server) = tokio::io::duplex(1 << 12);
        let mut client = client;
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("write");
        let settings = settings();
        let drain = Drain::default();
        let (mut shutdown, mut listener) = (drain.watch(), drain.watch());
        let closing = AtomicBool::new(false);
        let signals = Signals {
            shutdown: &mut shutdown,
            drain: &mut listener,
            closing: &closing,
        };
        let stats = HttpStats::new(Arc::from("test"));
        let ended = serve(server, &settings, &stats, signals, |_req| async {
            Response::new(body::empty())
        })
        .await
        .expect("served");
        match ended {
            Ended::Http2(pre, _) => assert!(pre.starts_with(H2_PREFACE), "{pre:?}"),
            Ended::Closed => panic!("the preface was read as HTTP/1"),
        }
    }
}
