//! HTTP/1.1 message heads: parsing a response head off the wire (the header
//! values share the read buffer) and writing a request head.

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

use super::body::Framing;

/// Most headers a response head may carry (hyper's and Envoy's default).
pub const MAX_HEADERS: usize = 100;
/// A response head larger than this is refused.
pub const MAX_HEAD: usize = 96 * 1024;

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

/// Where a header's name and value sit in the head.
#[derive(Clone, Copy, Default)]
struct Slot {
    name: (usize, usize),
    value: (usize, usize),
}

fn parse_one(buf: &mut BytesMut, head_request: bool) -> Result<Option<ResponseHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut slots = [Slot::default(); MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let base = buf.as_ptr() as usize;
    let (len, code, minor, count) = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            for (slot, h) in slots.iter_mut().zip(res.headers.iter()) {
                let at = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
                *slot = Slot {
                    name: at(h.name.as_bytes()),
                    value: at(h.value),
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
    let mut map = HeaderMap::with_capacity(count);
    for s in &slots[..count] {
        let name = HeaderName::from_bytes(&head[s.name.0..s.name.0 + s.name.1])
            .map_err(|_| HeadError::Malformed)?;
        let value = HeaderValue::from_maybe_shared(head.slice(s.value.0..s.value.0 + s.value.1))
            .map_err(|_| HeadError::Malformed)?;
        map.append(name, value);
    }
    let status = StatusCode::from_u16(code).map_err(|_| HeadError::Malformed)?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut keep_alive = keeps_alive(version, &map);
    let framing = if status == StatusCode::SWITCHING_PROTOCOLS {
        None
    } else if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Some(Framing::Length(0))
    } else if let Some(chunked) = transfer_chunked(&map) {
        // A length beside a transfer coding is ignored, and the connection
        // not trusted with another request (RFC 9112, 6.3).
        if map.contains_key(header::CONTENT_LENGTH) || !chunked {
            keep_alive = false;
        }
        Some(if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        })
    } else if let Some(n) = content_length(&map)? {
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
    target: (usize, usize),
    minor: u8,
    count: usize,
}

/// Runs httparse over `buf`, noting where each header is in `slots`.
fn locate(buf: &[u8], slots: &mut [Slot]) -> Result<Option<Located>, httparse::Error> {
    if slots.len() <= STACK_HEADERS {
        let mut h = [httparse::EMPTY_HEADER; STACK_HEADERS];
        locate_in(buf, &mut h[..slots.len()], slots)
    } else {
        let mut h = vec![httparse::EMPTY_HEADER; slots.len()];
        locate_in(buf, &mut h, slots)
    }
}

fn locate_in<'b>(
    buf: &'b [u8],
    headers: &mut [httparse::Header<'b>],
    slots: &mut [Slot],
) -> Result<Option<Located>, httparse::Error> {
    let mut req = httparse::Request::new(headers);
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    let httparse::Status::Complete(len) = req.parse(buf)? else {
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
    let head = buf.split_to(len).freeze();
    let uri = http::Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
        .map_err(|_| RequestError::Malformed)?;
    let mut map = HeaderMap::with_capacity(count);
    for s in &slots[..count] {
        let name = HeaderName::from_bytes(&head[s.name.0..s.name.0 + s.name.1])
            .map_err(|_| RequestError::Malformed)?;
        let value = HeaderValue::from_maybe_shared(head.slice(s.value.0..s.value.0 + s.value.1))
            .map_err(|_| RequestError::Malformed)?;
        map.append(name, value);
    }
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // A length beside a transfer coding, a coding that does not end in
    // chunked, or lengths that disagree: the smuggling shapes Envoy refuses.
    let framing = match transfer_chunked(&map) {
        Some(_) if map.contains_key(header::CONTENT_LENGTH) => return Err(RequestError::Malformed),
        Some(true) if version == Version::HTTP_11 => Framing::Chunked,
        Some(_) => return Err(RequestError::Malformed),
        None => match content_length(&map) {
            Ok(n) => Framing::Length(n.unwrap_or(0)),
            Err(_) => return Err(RequestError::Malformed),
        },
    };
    let expect_continue = version == Version::HTTP_11
        && map
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let keep_alive = keeps_alive(version, &map);
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

/// Whether any of the `Connection` header's tokens is `token`.
pub fn connection_has(map: &HeaderMap, token: &str) -> bool {
    map.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

fn keeps_alive(version: Version, map: &HeaderMap) -> bool {
    if version == Version::HTTP_10 {
        connection_has(map, "keep-alive")
    } else {
        !connection_has(map, "close")
    }
}

/// `Some(true)` when `Transfer-Encoding` ends in `chunked`, `Some(false)`
/// when it ends in another coding, `None` without the header.
pub fn transfer_chunked(map: &HeaderMap) -> Option<bool> {
    let last = map.get_all(header::TRANSFER_ENCODING).iter().next_back()?;
    let coding = last.as_bytes().rsplit(|&b| b == b',').next().unwrap_or(b"");
    Some(coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// The `Content-Length`: every value (and every comma-separated element)
/// must be the same number.
pub fn content_length(map: &HeaderMap) -> Result<Option<u64>, HeadError> {
    let mut found = None;
    for v in map.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|&b| b == b',') {
            let n = parse_decimal(part.trim_ascii()).ok_or(HeadError::ContentLength)?;
            if found.is_some_and(|f| f != n) {
                return Err(HeadError::ContentLength);
            }
            found = Some(n);
        }
    }
    Ok(found)
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
pub fn put_headers(out: &mut BytesMut, headers: &HeaderMap) {
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
    let target = match (uri.scheme(), uri.path_and_query()) {
        (None, Some(pq)) => pq.as_str(),
        (None, None) => "/",
        (Some(_), _) => "",
    };
    let mut out = BytesMut::with_capacity(256 + headers.len() * 32);
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    if target.is_empty() {
        out.put_slice(uri.to_string().as_bytes());
    } else {
        out.put_slice(target.as_bytes());
    }
    out.put_slice(b" HTTP/1.1\r\n");
    put_headers(&mut out, headers);
    if let Some(n) = add_length {
        out.put_slice(b"content-length: ");
        out.put_slice(n.to_string().as_bytes());
        out.put_slice(b"\r\n");
    }
    if chunked {
        out.put_slice(b"transfer-encoding: chunked\r\n");
    }
    out.put_slice(b"\r\n");
    out.freeze()
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
    keep_alive &= !connection_has(h, "close");
    let no_body = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let declared = content_length(h).ok().flatten();
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
    let mut out = BytesMut::with_capacity(128 + h.len() * 40);
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    put_headers(&mut out, h);
    if let Some(n) = add_length {
        out.put_slice(b"content-length: ");
        out.put_slice(n.to_string().as_bytes());
        out.put_slice(b"\r\n");
    }
    if chunked {
        out.put_slice(b"transfer-encoding: chunked\r\n");
    }
    if !h.contains_key(header::DATE) {
        out.put_slice(b"date: ");
        out.put_slice(date);
        out.put_slice(b"\r\n");
    }
    if !h.contains_key(header::CONNECTION) {
        if !keep_alive && request_version == Version::HTTP_11 {
            out.put_slice(b"connection: close\r\n");
        } else if keep_alive && request_version == Version::HTTP_10 {
            out.put_slice(b"connection: keep-alive\r\n");
        }
    }
    out.put_slice(b"\r\n");
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
