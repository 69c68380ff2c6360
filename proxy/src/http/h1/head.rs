//! HTTP/1.1 message heads: parsing a response head off the wire (the header
//! values share the read buffer) and writing a request head.

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

use super::body::Framing;

/// Most headers a response head may carry (hyper's and Envoy's default).
pub const MAX_HEADERS: usize = 100;
/// A response head larger than this is refused.
pub const MAX_HEAD: usize = 96 * 1024;
/// Room for the headers the proxy adds to a message on its way through
/// (`x-forwarded-*`, `x-request-id`, `x-envoy-*`, `server`), so that adding
/// them does not grow the map again.
const ADDED_HEADERS: usize = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed response head")]
    Malformed,
    #[error("response head too large")]
    TooLarge,
    #[error("too many response headers")]
    TooManyHeaders,
    #[error("invalid content-length")]
    ContentLength,
}

/// A parsed response head and what it says about its body and connection.
#[derive(Debug)]
pub struct ResponseHead {
    pub parts: http::response::Parts,
    /// `None`: no body (HEAD, 204, 304) or a switch of protocols (101).
    pub framing: Option<Framing>,
    /// The connection may carry another request after this one.
    pub keep_alive: bool,
}

/// Parses a complete response head from the front of `buf` and removes it;
/// `Ok(None)` while it is incomplete. Interim (1xx but 101) heads are
/// skipped. `head_request`: the request was `HEAD`, so no body follows.
pub fn parse_response(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<ResponseHead>, HeadError> {
    loop {
        let Some(head) = parse_one(buf, head_request)? else {
            return Ok(None);
        };
        let s = head.parts.status;
        if s.is_informational() && s != StatusCode::SWITCHING_PROTOCOLS {
            continue;
        }
        return Ok(Some(head));
    }
}

/// Where a header's name and value sit in the head (offset, length).
#[derive(Clone, Copy, Default)]
struct Slot {
    name: (u32, u32),
    value: (u32, u32),
}

impl Slot {
    fn name<'a>(&self, head: &'a [u8]) -> &'a [u8] {
        &head[self.name.0 as usize..(self.name.0 + self.name.1) as usize]
    }

    fn value(&self, head: &Bytes) -> Bytes {
        head.slice(self.value.0 as usize..(self.value.0 + self.value.1) as usize)
    }
}

/// The header map of a parsed head, its values sharing the head's bytes;
/// `None` when a name or value is not valid.
fn header_map(head: &Bytes, slots: &[Slot]) -> Option<HeaderMap> {
    let mut map = HeaderMap::with_capacity(slots.len() + ADDED_HEADERS);
    for s in slots {
        let name = HeaderName::from_bytes(s.name(head)).ok()?;
        let value = HeaderValue::from_maybe_shared(s.value(head)).ok()?;
        map.append(name, value);
    }
    Some(map)
}

/// Offset and length of `s`, a slice of the buffer starting at `base`
/// (heads are far smaller than 4 GiB).
fn span(base: usize, s: &[u8]) -> (u32, u32) {
    ((s.as_ptr() as usize - base) as u32, s.len() as u32)
}

/// The first `len` bytes of `buf` as a request head's storage. A buffer
/// that is the head and nothing more (the server reads each request into a
/// buffer of its own) is taken whole, which costs no allocation when it is
/// full; splitting it would share it.
fn take_head(buf: &mut BytesMut, len: usize) -> Bytes {
    if len == buf.len() {
        std::mem::take(buf).freeze()
    } else {
        buf.split_to(len).freeze()
    }
}

type Uninit<'b> = std::mem::MaybeUninit<httparse::Header<'b>>;

fn parse_one(buf: &mut BytesMut, head_request: bool) -> Result<Option<ResponseHead>, HeadError> {
    let mut headers = [const { Uninit::uninit() }; MAX_HEADERS];
    let mut slots = [Slot::default(); MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let base = buf.as_ptr() as usize;
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut headers,
    );
    let (len, code, minor, count) = match parsed {
        Ok(httparse::Status::Complete(len)) => {
            for (slot, h) in slots.iter_mut().zip(res.headers.iter()) {
                *slot = Slot {
                    name: span(base, h.name.as_bytes()),
                    value: span(base, h.value),
                };
            }
            let code = res.code.ok_or(HeadError::Malformed)?;
            (len, code, res.version.unwrap_or(1), res.headers.len())
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Malformed),
    };
    let head = buf.split_to(len).freeze();
    let map = header_map(&head, &slots[..count]).ok_or(HeadError::Malformed)?;
    let facts = Facts::of(&map);
    let status = StatusCode::from_u16(code).map_err(|_| HeadError::Malformed)?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut keep_alive = facts.keeps_alive(version);
    let framing = if status == StatusCode::SWITCHING_PROTOCOLS {
        None
    } else if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Some(Framing::Length(0))
    } else if let Some(chunked) = facts.chunked {
        // A length beside a transfer coding is ignored, and the connection
        // not trusted with another request (RFC 9112, 6.3).
        if facts.length.is_some() || !chunked {
            keep_alive = false;
        }
        Some(if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        })
    } else if let Some(n) = facts.length.transpose()? {
        Some(Framing::Length(n))
    } else {
        keep_alive = false;
        Some(Framing::Close)
    };
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = map;
    Ok(Some(ResponseHead {
        parts,
        framing,
        keep_alive,
    }))
}

/// Why a request head is refused: Envoy answers 400, or 431 for too many
/// headers or too large a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("malformed request head")]
    Malformed,
    #[error("too many request headers")]
    TooManyHeaders,
    #[error("request head too large")]
    TooLarge,
}

/// A parsed request head and how its body is framed.
#[derive(Debug)]
pub struct RequestHead {
    pub parts: http::request::Parts,
    /// `Length(0)` when no body follows.
    pub framing: Framing,
    /// The client keeps the connection after this request.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: answer 100 before reading the body.
    pub expect_continue: bool,
}

/// Header slots kept on the stack; more are allocated.
const STACK_HEADERS: usize = 128;

/// Parses a complete request head off the front of `buf` and removes it;
/// `Ok(None)` while it is incomplete. `max_headers`: the most headers
/// allowed; `max_bytes`: the most the head may take beyond its request
/// line.
pub fn parse_request(
    buf: &mut BytesMut,
    max_headers: usize,
    max_bytes: usize,
) -> Result<Option<RequestHead>, RequestError> {
    let slots = max_headers + 1;
    if slots <= STACK_HEADERS {
        let mut at = [Slot::default(); STACK_HEADERS];
        parse_request_in(buf, &mut at[..slots], max_headers, max_bytes)
    } else {
        let mut at = vec![Slot::default(); slots];
        parse_request_in(buf, &mut at, max_headers, max_bytes)
    }
}

/// A request line and where its headers sit.
struct Located {
    len: usize,
    method: Method,
    target: (u32, u32),
    minor: u8,
    count: usize,
}

/// Runs httparse over `buf`, noting where each header is in `slots`.
fn locate(buf: &[u8], slots: &mut [Slot]) -> Result<Option<Located>, httparse::Error> {
    if slots.len() <= STACK_HEADERS {
        let mut h = [const { Uninit::uninit() }; STACK_HEADERS];
        locate_in(buf, &mut h[..slots.len()], slots)
    } else {
        let mut h: Vec<Uninit<'_>> = (0..slots.len()).map(|_| Uninit::uninit()).collect();
        locate_in(buf, &mut h, slots)
    }
}

fn locate_in<'b>(
    buf: &'b [u8],
    headers: &mut [Uninit<'b>],
    slots: &mut [Slot],
) -> Result<Option<Located>, httparse::Error> {
    let mut req = httparse::Request::new(&mut []);
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| span(base, s);
    let httparse::Status::Complete(len) = req.parse_with_uninit_headers(buf, headers)? else {
        return Ok(None);
    };
    for (slot, h) in slots.iter_mut().zip(req.headers.iter()) {
        *slot = Slot {
            name: at(h.name.as_bytes()),
            value: at(h.value),
        };
    }
    let method = req.method.unwrap_or("");
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| httparse::Error::Token)?;
    Ok(Some(Located {
        len,
        method,
        target: at(req.path.unwrap_or("").as_bytes()),
        minor: req.version.unwrap_or(1),
        count: req.headers.len(),
    }))
}

fn parse_request_in(
    buf: &mut BytesMut,
    slots: &mut [Slot],
    max_headers: usize,
    max_bytes: usize,
) -> Result<Option<RequestHead>, RequestError> {
    let Located {
        len,
        method,
        target,
        minor,
        count,
    } = match locate(buf, slots) {
        Ok(Some(l)) => l,
        Ok(None) if buf.len() > max_bytes + 8 * 1024 => return Err(RequestError::TooLarge),
        Ok(None) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooManyHeaders),
        Err(_) => return Err(RequestError::Malformed),
    };
    if count > max_headers {
        return Err(RequestError::TooManyHeaders);
    }
    let head = take_head(buf, len);
    let target = head.slice(target.0 as usize..(target.0 + target.1) as usize);
    let uri = http::Uri::from_maybe_shared(target).map_err(|_| RequestError::Malformed)?;
    let map = header_map(&head, &slots[..count]).ok_or(RequestError::Malformed)?;
    let facts = Facts::of(&map);
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // A length beside a transfer coding, a coding that does not end in
    // chunked, or lengths that disagree: the smuggling shapes Envoy refuses.
    let framing = match (facts.chunked, facts.length) {
        (Some(_), Some(_)) => return Err(RequestError::Malformed),
        (Some(true), None) if version == Version::HTTP_11 => Framing::Chunked,
        (Some(_), None) => return Err(RequestError::Malformed),
        (None, Some(Ok(n))) => Framing::Length(n),
        (None, Some(Err(_))) => return Err(RequestError::Malformed),
        (None, None) => Framing::Length(0),
    };
    let expect_continue = version == Version::HTTP_11 && facts.expect_continue;
    let keep_alive = facts.keeps_alive(version);
    let mut parts = http::Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = map;
    Ok(Some(RequestHead {
        parts,
        framing,
        keep_alive,
        expect_continue,
    }))
}

/// What a head's headers say about framing and the connection, gathered
/// in one pass over them instead of a hashed lookup per name.
#[derive(Debug, Default)]
pub struct Facts {
    /// `Content-Length`: every value (and comma-separated element) must be
    /// the same number.
    pub length: Option<Result<u64, HeadError>>,
    /// `Transfer-Encoding` is present: whether its last coding is chunked.
    pub chunked: Option<bool>,
    /// `Connection` names `close` / `keep-alive`.
    pub close: bool,
    pub keep_alive: bool,
    pub connection: bool,
    pub expect_continue: bool,
    pub date: bool,
}

impl Facts {
    pub fn of(map: &HeaderMap) -> Facts {
        let mut f = Facts::default();
        for (name, value) in map {
            let v = value.as_bytes();
            if name == header::CONTENT_LENGTH {
                f.length = Some(merge_length(f.length, v));
            } else if name == header::TRANSFER_ENCODING {
                let last = v.rsplit(|&b| b == b',').next().unwrap_or(b"");
                f.chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if name == header::CONNECTION {
                f.connection = true;
                for t in v.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    f.close |= t.eq_ignore_ascii_case(b"close");
                    f.keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
                }
            } else if name == header::EXPECT {
                f.expect_continue = v.eq_ignore_ascii_case(b"100-continue");
            } else if name == header::DATE {
                f.date = true;
            }
        }
        f
    }

    /// HTTP/1.1 keeps the connection unless told to close; 1.0 only when
    /// told to keep it.
    pub fn keeps_alive(&self, version: Version) -> bool {
        if version == Version::HTTP_10 {
            self.keep_alive
        } else {
            !self.close
        }
    }
}

fn merge_length(prev: Option<Result<u64, HeadError>>, v: &[u8]) -> Result<u64, HeadError> {
    let mut found = match prev {
        Some(Err(e)) => return Err(e),
        Some(Ok(n)) => Some(n),
        None => None,
    };
    for part in v.split(|&b| b == b',') {
        let n = parse_decimal(part.trim_ascii()).ok_or(HeadError::ContentLength)?;
        if found.is_some_and(|f| f != n) {
            return Err(HeadError::ContentLength);
        }
        found = Some(n);
    }
    found.ok_or(HeadError::ContentLength)
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add((d - b'0') as u64)
    })
}

/// Writes `name: value` lines.
pub fn put_headers(out: &mut impl BufMut, headers: &HeaderMap) {
    for (name, value) in headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
}

/// Writes an HTTP/1.1 request head. `add_length`: a `Content-Length` the
/// head lacks; `chunked`: add `Transfer-Encoding: chunked`.
pub fn encode_request(
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    add_length: Option<u64>,
    chunked: bool,
) -> Bytes {
    let absolute;
    let target = match (uri.scheme(), uri.path_and_query()) {
        (None, Some(pq)) => pq.as_str(),
        (None, None) => "/",
        (Some(_), _) => {
            absolute = uri.to_string();
            absolute.as_str()
        }
    };
    let mut out = Head::with_len(
        method.as_str().len()
            + 1
            + target.len()
            + b" HTTP/1.1\r\n".len()
            + fields_len(headers, add_length, chunked)
            + 2,
    );
    out.put(method.as_str().as_bytes());
    out.put(b" ");
    out.put(target.as_bytes());
    out.put(b" HTTP/1.1\r\n");
    out.fields(headers, add_length, chunked);
    out.put(b"\r\n");
    out.freeze()
}

const CHUNKED: &[u8] = b"transfer-encoding: chunked\r\n";
const CONTENT_LENGTH: &[u8] = b"content-length: ";

/// Bytes of the lines [`Head::fields`] writes.
fn fields_len(headers: &HeaderMap, add_length: Option<u64>, chunked: bool) -> usize {
    let lines: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    let length = add_length.map_or(0, |n| {
        CONTENT_LENGTH.len() + n.checked_ilog10().map_or(1, |d| d as usize + 1) + 2
    });
    lines + length + if chunked { CHUNKED.len() } else { 0 }
}

/// A head being written into a buffer sized for it up front: a full buffer
/// becomes `Bytes` without the extra allocation a partly used one costs.
struct Head(Vec<u8>);

impl Head {
    fn with_len(len: usize) -> Head {
        Head(Vec::with_capacity(len))
    }

    fn put(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }

    /// The header lines, then the framing lines the head lacks: a
    /// `Content-Length` of `add_length`, `Transfer-Encoding: chunked`.
    fn fields(&mut self, headers: &HeaderMap, add_length: Option<u64>, chunked: bool) {
        put_headers(&mut self.0, headers);
        if let Some(n) = add_length {
            use std::io::Write;
            self.put(CONTENT_LENGTH);
            let _ = write!(self.0, "{n}");
            self.put(b"\r\n");
        }
        if chunked {
            self.put(CHUNKED);
        }
    }

    fn freeze(self) -> Bytes {
        Bytes::from(self.0)
    }
}

/// How a response body goes on the wire, and whether the connection
/// closes after it.
pub struct ResponseFraming {
    pub encoder: super::body::Encoder,
    /// Nothing follows the head (HEAD, 1xx, 204, 304, or an empty body).
    pub bodiless: bool,
    pub close: bool,
}

/// Writes a response head; adds `content-length` or chunking, `date`, and
/// `connection` as the framing and `keep_alive` need.
#[allow(clippy::too_many_arguments)]
pub fn encode_response(
    parts: &http::response::Parts,
    body_len: Option<u64>,
    body_empty: bool,
    head_request: bool,
    request_version: Version,
    mut keep_alive: bool,
    date: &[u8],
) -> (Bytes, ResponseFraming) {
    use super::body::Encoder;
    let status = parts.status;
    let h = &parts.headers;
    let facts = Facts::of(h);
    keep_alive &= !facts.close;
    let no_body = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let declared = facts.length.and_then(Result::ok);
    let mut add_length = None;
    let mut chunked = false;
    let encoder = if no_body {
        Encoder::Length(0)
    } else if let Some(n) = declared {
        Encoder::Length(n)
    } else if body_empty {
        add_length = Some(0);
        Encoder::Length(0)
    } else if let Some(n) = body_len {
        add_length = Some(n);
        Encoder::Length(n)
    } else if request_version == Version::HTTP_11 {
        chunked = true;
        Encoder::Chunked
    } else {
        keep_alive = false;
        Encoder::Close
    };
    let reason = status.canonical_reason().unwrap_or("");
    let connection: &[u8] = match (facts.connection, keep_alive, request_version) {
        (false, false, Version::HTTP_11) => b"connection: close\r\n",
        (false, true, Version::HTTP_10) => b"connection: keep-alive\r\n",
        _ => b"",
    };
    let date_len = if facts.date { 0 } else { 8 + date.len() };
    let mut out = Head::with_len(
        b"HTTP/1.1 200 \r\n".len()
            + reason.len()
            + fields_len(h, add_length, chunked)
            + date_len
            + connection.len()
            + 2,
    );
    out.put(b"HTTP/1.1 ");
    out.put(status.as_str().as_bytes());
    out.put(b" ");
    out.put(reason.as_bytes());
    out.put(b"\r\n");
    out.fields(h, add_length, chunked);
    if !facts.date {
        out.put(b"date: ");
        out.put(date);
        out.put(b"\r\n");
    }
    out.put(connection);
    out.put(b"\r\n");
    let bodiless = no_body || body_empty;
    (
        out.freeze(),
        ResponseFraming {
            encoder,
            bodiless,
            close: !keep_alive,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(wire: &[u8], head_request: bool) -> Result<Option<ResponseHead>, HeadError> {
        let mut buf = BytesMut::from(wire);
        parse_response(&mut buf, head_request)
    }

    #[test]
    fn response_heads_and_their_framing() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc"[..],
        );
        let h = parse_response(&mut buf, false).unwrap().unwrap();
        assert_eq!(h.parts.status, 200);
        assert_eq!(h.parts.headers["x-a"], "b");
        assert_eq!(h.framing, Some(Framing::Length(3)));
        assert!(h.keep_alive);
        assert_eq!(&buf[..], b"abc", "the body stays in the buffer");

        let h = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        );
        assert_eq!(h.unwrap().unwrap().framing, Some(Framing::Chunked));
        let h = parse(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap().unwrap();
        assert_eq!((h.framing, h.keep_alive), (Some(Framing::Close), false));
        let h = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true);
        assert_eq!(h.unwrap().unwrap().framing, Some(Framing::Length(0)));
        let h = parse(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            false,
        );
        assert_eq!(h.unwrap().unwrap().framing, None);
        let h = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false);
        assert!(!h.unwrap().unwrap().keep_alive);
        let h = parse(
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(h.unwrap().unwrap().keep_alive);
        let h = parse(
            b"HTTP/1.1 200 OK\r\nConnection: foo, close\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(!h.unwrap().unwrap().keep_alive);
        let h = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Some(Framing::Chunked), false));
    }

    #[test]
    fn content_lengths_must_agree() {
        let h = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n",
            false,
        );
        assert_eq!(h.unwrap().unwrap().framing, Some(Framing::Length(4)));
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 4, 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        ] {
            assert_eq!(parse(bad, false).unwrap_err(), HeadError::ContentLength);
        }
    }

    #[test]
    fn partial_oversized_and_malformed_heads() {
        assert!(parse(b"HTTP/1.1 200 OK\r\nX-A: b\r\n", false)
            .unwrap()
            .is_none());
        let big = [
            b"HTTP/1.1 200 OK\r\nX-A: ".as_slice(),
            &[b'a'; MAX_HEAD + 1],
        ]
        .concat();
        assert_eq!(parse(&big, false).unwrap_err(), HeadError::TooLarge);
        let many: Vec<u8> = b"HTTP/1.1 200 OK\r\n"
            .iter()
            .copied()
            .chain((0..=MAX_HEADERS).flat_map(|i| format!("x-{i}: v\r\n").into_bytes()))
            .chain(*b"\r\n")
            .collect();
        assert_eq!(parse(&many, false).unwrap_err(), HeadError::TooManyHeaders);
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", false).unwrap_err(),
            HeadError::Malformed
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\n\r\n", false).unwrap_err(),
            HeadError::Malformed,
            "obs-fold is refused"
        );
    }

    #[test]
    fn request_heads_are_written_lowercase_with_framing() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a.example"));
        h.append("X-Two", HeaderValue::from_static("1"));
        let uri: http::Uri = "/p?q=1".parse().unwrap();
        let wire = encode_request(&Method::POST, &uri, &h, Some(5), false);
        assert_eq!(
            &wire[..],
            b"POST /p?q=1 HTTP/1.1\r\nhost: a.example\r\nx-two: 1\r\ncontent-length: 5\r\n\r\n"
        );
        let wire = encode_request(&Method::GET, &uri, &HeaderMap::new(), None, true);
        assert_eq!(
            &wire[..],
            b"GET /p?q=1 HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }
}
