//! An HTTP/1.1 upstream connection driven by the request's own task: the
//! request future writes the head and body and reads the response head, the
//! response body reads on from the connection (and finishes writing a
//! request body the upstream answered early), and the connection goes back
//! to its pool when both messages ended cleanly. No task or channel sits
//! between the request and the socket.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, ReadBuf};

use super::body::{BodyError, Decoded, Decoder, Encoder};
use super::head::{self, HeadError, ResponseHead};
use super::write::{WriteError, Writer};
use crate::body::{self, Body, BoxError};
use crate::tls::ClientStream;

/// The read buffer grows in steps of this, up to [`MAX_READ`] per read.
const MIN_READ: usize = 8 * 1024;
const MAX_READ: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("upstream closed the connection before responding")]
    Closed,
    #[error("request body: {0}")]
    RequestBody(BoxError),
}

/// An open connection and what was read from it but not yet used.
pub struct Conn {
    io: ClientStream,
    buf: BytesMut,
    /// How much the next read may take: grows while reads fill it.
    read_size: usize,
}

impl Conn {
    pub fn new(io: ClientStream) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            read_size: MIN_READ,
        }
    }

    /// Whether an idle connection can take a request: the upstream has not
    /// closed it nor sent anything unasked.
    pub fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut rb = ReadBuf::new(&mut probe);
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut rb)
            .is_pending()
    }

    /// Reads more into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.read_size / 4 {
            self.buf.reserve(self.read_size);
        }
        let spare = self.buf.capacity() - self.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))?;
        if n == spare && self.read_size < MAX_READ {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }
}

/// A connection checked out of a pool for one exchange.
pub trait Lease: Send + 'static {
    fn conn(&mut self) -> &mut Conn;
    /// Both messages ended cleanly: back to the idle stack.
    fn recycle(self);
    /// The protocol switched: the stream leaves the pool for good.
    fn into_conn(self) -> Conn;
}

/// Sends `req` on the leased connection; resolves to the response, whose
/// body streams from it. A plain future rather than an `async fn`: while
/// the upstream answers it holds the exchange and nothing else.
pub fn send<L: Lease>(lease: L, req: Request<Body>) -> Sending<L> {
    let (parts, body) = req.into_parts();
    let head_request = parts.method == Method::HEAD;
    let ex = request_framing(&parts.headers, body).map(|(add_length, encoder, body)| {
        let chunked = matches!(encoder, Encoder::Chunked);
        let wire = head::encode_request(
            &parts.method,
            &parts.uri,
            &parts.headers,
            add_length,
            chunked,
        );
        Exchange {
            lease,
            writer: Writer::new(wire, body, encoder),
            write_error: None,
        }
    });
    Sending {
        ex: Some(ex),
        head_request,
    }
}

/// The future [`send`] returns.
pub struct Sending<L> {
    /// `None` once it has resolved.
    ex: Option<Result<Exchange<L>, Error>>,
    head_request: bool,
}

/// Never pinned in place: the exchange moves out when the head arrives.
impl<L> Unpin for Sending<L> {}

impl<L: Lease> Future for Sending<L> {
    type Output = Result<Response<Body>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let head = match this.ex.as_mut() {
            Some(Ok(ex)) => ready!(ex.poll_head(cx, this.head_request)),
            Some(Err(_)) | None => Err(Error::Closed),
        };
        match (this.ex.take(), head) {
            (Some(Ok(ex)), Ok(head)) => Poll::Ready(Ok(respond(ex, head))),
            (Some(Err(e)), _) | (_, Err(e)) => Poll::Ready(Err(e)),
            (None, Ok(_)) => Poll::Ready(Err(Error::Closed)),
        }
    }
}

/// The response to a head that arrived, its body reading on from the
/// connection.
fn respond<L: Lease>(mut ex: Exchange<L>, head: ResponseHead) -> Response<Body> {
    let ResponseHead {
        parts,
        framing,
        keep_alive,
    } = head;
    let Some(framing) = framing else {
        return upgraded(ex, parts);
    };
    let decoder = Decoder::new(framing);
    let reuse = keep_alive && ex.write_error.is_none();
    // A body already read whole (the common small response) is handed over
    // as bytes, and the connection goes back to the pool at once.
    if let Some(n) = decoder.remaining() {
        let conn = ex.lease.conn();
        if conn.buf.len() as u64 >= n {
            let data = conn.buf.split_to(n as usize).freeze();
            if reuse && ex.writer.is_done() {
                ex.lease.recycle();
            }
            let body = if data.is_empty() {
                body::empty()
            } else {
                body::full(data)
            };
            return Response::from_parts(parts, body);
        }
    }
    let body = ResponseBody {
        ex: Some(ex),
        decoder,
        reuse,
    };
    Response::from_parts(parts, body.boxed_unsync())
}

/// How the request body goes on the wire: a `Content-Length` to add, the
/// encoder, and the body when one follows the head.
fn request_framing(
    headers: &http::HeaderMap,
    body: Body,
) -> Result<(Option<u64>, Encoder, Option<Body>), Error> {
    let declared = head::Facts::of(headers).length.transpose()?;
    let body = (!body.is_end_stream()).then_some(body);
    Ok(match (declared, body) {
        (Some(n), body) => (None, Encoder::Length(n), body),
        (None, None) => (None, Encoder::Length(0), None),
        (None, Some(b)) => match b.size_hint().exact() {
            Some(n) => (Some(n), Encoder::Length(n), Some(b)),
            None => (None, Encoder::Chunked, Some(b)),
        },
    })
}

fn upgraded<L: Lease>(ex: Exchange<L>, parts: http::response::Parts) -> Response<Body> {
    let Conn { io, buf, .. } = ex.lease.into_conn();
    let mut resp = Response::from_parts(parts, body::empty());
    let up = Upgraded::new(buf.freeze(), io);
    resp.extensions_mut()
        .insert(Upgrade(Arc::new(Mutex::new(Some(up)))));
    resp
}

struct Exchange<L> {
    lease: L,
    writer: Writer,
    /// Writing failed: the response may still have come, but the
    /// connection is not reused.
    write_error: Option<Error>,
}

impl<L: Lease> Exchange<L> {
    /// Writes what it can, and reports a request body that failed.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        if self.write_error.is_some() || self.writer.is_done() {
            return Ok(());
        }
        match self.writer.poll(cx, &mut self.lease.conn().io) {
            Poll::Ready(Err(WriteError::Body(e))) => Err(Error::RequestBody(e)),
            Poll::Ready(Err(WriteError::Framing(e))) => Err(Error::Body(e)),
            Poll::Ready(Err(WriteError::Io(e))) => {
                self.write_error = Some(Error::Io(e));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
    ) -> Poll<Result<ResponseHead, Error>> {
        self.poll_write(cx)?;
        let conn = self.lease.conn();
        loop {
            if let Some(h) = head::parse_response(&mut conn.buf, head_request)? {
                return Poll::Ready(Ok(h));
            }
            if ready!(conn.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(self.write_error.take().unwrap_or(Error::Closed)));
            }
        }
    }
}

/// The response body, read from the connection as the downstream takes it.
struct ResponseBody<L> {
    /// `None` once the body ended (or failed) and the connection left.
    ex: Option<Exchange<L>>,
    decoder: Decoder,
    reuse: bool,
}

impl<L: Lease> ResponseBody<L> {
    /// The body ended: the connection goes back when the request is out too.
    fn finish(&mut self, clean: bool) {
        if let Some(ex) = self.ex.take() {
            if clean && self.reuse && ex.writer.is_done() && ex.write_error.is_none() {
                ex.lease.recycle();
            }
        }
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.ex = None;
        Poll::Ready(Some(Err(Box::new(e))))
    }
}

/// Never pinned in place: the lease moves out when the body ends.
impl<L> Unpin for ResponseBody<L> {}

impl<L: Lease> http_body::Body for ResponseBody<L> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(ex) = this.ex.as_mut() else {
            return Poll::Ready(None);
        };
        if let Err(e) = ex.poll_write(cx) {
            return this.fail(e);
        }
        loop {
            let conn = ex.lease.conn();
            let step = match this.decoder.decode(&mut conn.buf) {
                Ok(Decoded::More) => match conn.poll_fill(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return this.fail(e.into()),
                    Poll::Ready(Ok(0)) => match this.decoder.eof() {
                        Ok(_) => {
                            this.finish(false);
                            return Poll::Ready(None);
                        }
                        Err(e) => return this.fail(e.into()),
                    },
                    Poll::Ready(Ok(_)) => continue,
                },
                Ok(step) => step,
                Err(e) => return this.fail(e.into()),
            };
            return match step {
                Decoded::Data(data) => {
                    if this.decoder.is_done() {
                        this.finish(true);
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Decoded::Trailers(t) => {
                    this.finish(true);
                    Poll::Ready(Some(Ok(Frame::trailers(t))))
                }
                Decoded::End | Decoded::More => {
                    this.finish(true);
                    Poll::Ready(None)
                }
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ex.is_none() || self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// The upstream's side of a switched protocol (101), in the response's
/// extensions until the tunnel takes it.
#[derive(Clone)]
pub struct Upgrade(Arc<Mutex<Option<Upgraded>>>);

impl Upgrade {
    pub fn take(&self) -> Option<Upgraded> {
        self.0.lock().ok()?.take()
    }
}

/// The upstream stream after a 101, with the bytes already read past the
/// response head handed out first.
pub type Upgraded = crate::io::Prefixed<ClientStream>;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A lease whose connection goes back to `home` when recycled.
    struct TestLease {
        conn: Conn,
        home: Arc<Mutex<Option<Conn>>>,
    }

    impl Lease for TestLease {
        fn conn(&mut self) -> &mut Conn {
            &mut self.conn
        }
        fn recycle(self) {
            *self.home.lock().expect("home") = Some(self.conn);
        }
        fn into_conn(self) -> Conn {
            self.conn
        }
    }

    /// An upstream on loopback that reads until `marker` and answers
    /// `replies` in turn on one connection; returns what it read.
    async fn upstream(
        replies: Vec<&'static [u8]>,
        marker: &'static [u8],
    ) -> (u16, Arc<Mutex<Vec<u8>>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut pending = Vec::new();
            for reply in replies {
                let mut buf = [0u8; 4096];
                while !pending.windows(marker.len()).any(|w| w == marker) {
                    let n = s.read(&mut buf).await.expect("read");
                    if n == 0 {
                        return;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    log.lock().expect("log").extend_from_slice(&buf[..n]);
                }
                pending.clear();
                s.write_all(reply).await.expect("write");
            }
        });
        (port, seen)
    }

    async fn lease(port: u16) -> (TestLease, Arc<Mutex<Option<Conn>>>) {
        let s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let home = Arc::new(Mutex::new(None));
        let conn = Conn::new(ClientStream::Plain(s));
        (
            TestLease {
                conn,
                home: home.clone(),
            },
            home,
        )
    }

    fn request(method: &str, body: Body) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri("/p")
            .header("host", "up")
            .body(body)
            .expect("request")
    }

    #[tokio::test]
    async fn chunked_body_with_trailers_streams_and_the_connection_is_reused() {
        let (port, seen) = upstream(
            vec![
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\ngrpc-status: 0\r\n\r\n",
                b"HTTP/1.1 204 No Content\r\n\r\n",
            ],
            b"\r\n\r\n",
        )
        .await;
        let (l, home) = lease(port).await;
        let resp = send(l, request("GET", body::empty())).await.expect("send");
        assert_eq!(resp.status(), 200, "the interim 100 is skipped");
        assert!(home.lock().expect("home").is_none(), "body not read yet");
        let collected = resp.into_body().collect().await.expect("body");
        assert_eq!(collected.trailers().expect("trailers")["grpc-status"], "0");
        assert_eq!(&collected.to_bytes()[..], b"abc");
        let mut conn = home.lock().expect("home").take().expect("recycled");
        assert!(conn.is_usable());
        let l = TestLease {
            conn,
            home: home.clone(),
        };
        let resp = send(l, request("GET", body::empty()))
            .await
            .expect("second");
        assert_eq!(resp.status(), 204);
        assert!(
            home.lock().expect("home").is_some(),
            "bodiless answer recycles at once"
        );
        assert_eq!(
            &seen.lock().expect("seen")[..],
            b"GET /p HTTP/1.1\r\nhost: up\r\n\r\nGET /p HTTP/1.1\r\nhost: up\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_streamed_request_body_is_chunked_and_close_is_honoured() {
        let (port, seen) = upstream(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"],
            b"0\r\n\r\n",
        )
        .await;
        let (l, home) = lease(port).await;
        let frames = futures::stream::iter([
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"hello"))),
            Ok(Frame::data(Bytes::from_static(b" you"))),
        ]);
        let body = http_body_util::StreamBody::new(frames).boxed_unsync();
        let resp = send(l, request("POST", body)).await.expect("send");
        let got = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&got[..], b"ok");
        assert!(home.lock().expect("home").is_none(), "closed, not recycled");
        assert_eq!(
            &seen.lock().expect("seen")[..],
            &b"POST /p HTTP/1.1\r\nhost: up\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n4\r\n you\r\n0\r\n\r\n"[..]
        );
    }

    #[tokio::test]
    async fn a_close_before_the_response_and_a_truncated_body_are_errors() {
        let (port, _) = upstream(vec![], b"\r\n\r\n").await;
        let (l, _) = lease(port).await;
        let err = send(l, request("GET", body::empty()))
            .await
            .expect_err("closed");
        // A reset may beat the orderly close to the client.
        assert!(matches!(err, Error::Closed | Error::Io(_)), "{err}");

        let (port, _) = upstream(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"],
            b"\r\n\r\n",
        )
        .await;
        let (l, home) = lease(port).await;
        let resp = send(l, request("GET", body::empty())).await.expect("head");
        assert!(
            resp.into_body().collect().await.is_err(),
            "truncated body fails"
        );
        assert!(home.lock().expect("home").is_none());
    }

    #[tokio::test]
    async fn a_closed_idle_connection_is_not_usable() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        let (mut conn, _) = lease(port).await;
        let (server, _) = l.accept().await.expect("accept");
        assert!(conn.conn.is_usable());
        drop(server);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!conn.conn.is_usable());
    }
}
