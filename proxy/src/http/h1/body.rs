//! HTTP/1.1 body framing: a decoder for bodies read off a connection
//! (Content-Length, chunked with trailers, close-delimited) and an encoder
//! for bodies written to one.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::HeaderMap;

use super::head;
use super::write::Pieces;

/// A chunk-size line longer than this (size and extensions) is refused.
const MAX_CHUNK_LINE: usize = 4096;
/// Trailer section limit, as the head's.
const MAX_TRAILERS: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("invalid chunk size line")]
    ChunkSize,
    #[error("chunk size line too long")]
    ChunkLineTooLong,
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    #[error("invalid trailers")]
    Trailers,
    #[error("connection closed before the body ended")]
    Truncated,
    #[error("body longer than its content-length")]
    TooLong,
    #[error("body shorter than its content-length")]
    TooShort,
}

/// How a body read off the wire ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// Until the peer closes (responses only).
    Close,
}

#[derive(Debug)]
pub struct Decoder {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    Close,
    Done,
}

/// One step of decoding.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// More bytes are needed.
    More,
}

impl Decoder {
    pub fn new(framing: Framing) -> Decoder {
        let state = match framing {
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        Decoder { state }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes still expected, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of the body out of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, BodyError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Length(n) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let take = n.min(buf.len() as u64);
                    self.state = match n - take {
                        0 => State::Done,
                        left => State::Length(left),
                    };
                    return Ok(Decoded::Data(buf.split_to(take as usize).freeze()));
                }
                State::Close => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                State::ChunkSize => {
                    let Some(size) = chunk_size(buf)? else {
                        return Ok(Decoded::More);
                    };
                    self.state = match size {
                        0 => State::Trailers,
                        n => State::ChunkData(n),
                    };
                }
                State::ChunkData(n) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let take = n.min(buf.len() as u64);
                    self.state = match n - take {
                        0 => State::ChunkEnd,
                        left => State::ChunkData(left),
                    };
                    return Ok(Decoded::Data(buf.split_to(take as usize).freeze()));
                }
                State::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(BodyError::ChunkEnd);
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.state = State::Done;
                        return Ok(Decoded::End);
                    }
                    if buf.len() < 2 {
                        return Ok(Decoded::More);
                    }
                    let Some(trailers) = trailers(buf)? else {
                        return Ok(Decoded::More);
                    };
                    self.state = State::Done;
                    return Ok(Decoded::Trailers(trailers));
                }
            }
        }
    }

    /// The peer closed: the end of a close-delimited body, else a truncation.
    pub fn eof(&mut self) -> Result<Decoded, BodyError> {
        match self.state {
            State::Close | State::Done => {
                self.state = State::Done;
                Ok(Decoded::End)
            }
            _ => Err(BodyError::Truncated),
        }
    }
}

/// Parses `1*HEXDIG [ BWS ";" ext ] CRLF`; consumes the line when complete.
fn chunk_size(buf: &mut BytesMut) -> Result<Option<u64>, BodyError> {
    let window = &buf[..buf.len().min(MAX_CHUNK_LINE)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() >= MAX_CHUNK_LINE {
            return Err(BodyError::ChunkLineTooLong);
        }
        return Ok(None);
    };
    let line = match window[..lf].strip_suffix(b"\r") {
        Some(l) => l,
        None => return Err(BodyError::ChunkSize),
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(BodyError::ChunkSize);
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let d = (b as char).to_digit(16).ok_or(BodyError::ChunkSize)? as u64;
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(d))
            .ok_or(BodyError::ChunkSize)?;
    }
    let rest = &line[digits..];
    let ext = rest.trim_ascii_start();
    if !rest.is_empty() {
        // Only extensions may follow the size, and only visible text in them.
        let Some(ext) = ext.strip_prefix(b";") else {
            return Err(BodyError::ChunkSize);
        };
        if ext.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(BodyError::ChunkSize);
        }
    }
    buf.advance(lf + 1);
    Ok(Some(size))
}

/// The trailer section after the last chunk, up to and with its blank line.
fn trailers(buf: &mut BytesMut) -> Result<Option<HeaderMap>, BodyError> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete((len, parsed))) => {
            let mut map = HeaderMap::with_capacity(parsed.len());
            for h in parsed.iter() {
                let name = http::HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| BodyError::Trailers)?;
                let value =
                    http::HeaderValue::from_bytes(h.value).map_err(|_| BodyError::Trailers)?;
                map.append(name, value);
            }
            buf.advance(len);
            Ok(Some(map))
        }
        Ok(httparse::Status::Partial) if buf.len() < MAX_TRAILERS => Ok(None),
        _ => Err(BodyError::Trailers),
    }
}

/// Frames a body being written: checks a declared length or chunks it.
#[derive(Debug)]
pub enum Encoder {
    Length(u64),
    Chunked,
    /// Raw bytes, ended by closing the connection (HTTP/1.0 responses).
    Close,
}

impl Encoder {
    pub fn data(&mut self, data: Bytes, out: &mut Pieces) -> Result<(), BodyError> {
        if data.is_empty() {
            return Ok(());
        }
        match self {
            Encoder::Length(left) => {
                let n = data.len() as u64;
                if n > *left {
                    return Err(BodyError::TooLong);
                }
                *left -= n;
                out.push(data);
            }
            Encoder::Close => out.push(data),
            Encoder::Chunked => {
                out.push(chunk_line(data.len()));
                out.push(data);
                out.push(Bytes::from_static(b"\r\n"));
            }
        }
        Ok(())
    }

    /// The end of the body, with its trailers (sent only when chunked).
    pub fn end(&mut self, trailers: Option<&HeaderMap>, out: &mut Pieces) -> Result<(), BodyError> {
        match self {
            Encoder::Length(0) | Encoder::Close => Ok(()),
            Encoder::Length(_) => Err(BodyError::TooShort),
            Encoder::Chunked => {
                match trailers.filter(|t| !t.is_empty()) {
                    None => out.push(Bytes::from_static(b"0\r\n\r\n")),
                    Some(t) => {
                        let mut b = BytesMut::with_capacity(64);
                        b.put_slice(b"0\r\n");
                        head::put_headers(&mut b, t);
                        b.put_slice(b"\r\n");
                        out.push(b.freeze());
                    }
                }
                Ok(())
            }
        }
    }
}

/// A chunk's size line, `{len:x}\r\n`.
fn chunk_line(len: usize) -> Bytes {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut line = [0u8; 2 * std::mem::size_of::<usize>() + 2];
    let digits = (len.checked_ilog2().unwrap_or(0) / 4 + 1) as usize;
    for (i, d) in line[..digits].iter_mut().enumerate() {
        *d = HEX[(len >> (4 * (digits - 1 - i))) & 0xf];
    }
    line[digits..digits + 2].copy_from_slice(b"\r\n");
    Bytes::copy_from_slice(&line[..digits + 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed in pieces of `step` bytes; the body, the trailers,
    /// or the first error.
    fn decode(
        framing: Framing,
        wire: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>, bool), BodyError> {
        let mut d = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut trailers = None;
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => body.extend_from_slice(&b),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((body, trailers, true)),
                Decoded::More if fed >= wire.len() => {
                    return match d.eof()? {
                        Decoded::End => Ok((body, trailers, false)),
                        _ => Err(BodyError::Truncated),
                    }
                }
                Decoded::More => {
                    let n = step.min(wire.len() - fed);
                    buf.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn content_length_stops_at_its_length() {
        for step in [1, 3, 100] {
            let (b, _, ended) = decode(Framing::Length(5), b"helloEXTRA", step).unwrap();
            assert_eq!(b, b"hello");
            assert!(ended);
        }
        assert_eq!(
            decode(Framing::Length(5), b"hel", 2),
            Err(BodyError::Truncated)
        );
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let wire = b"5;name=value\r\nhello\r\n6 ; x\r\n world\r\n0\r\nx-t: 1\r\nx-u: two\r\n\r\n";
        for step in [1, 2, 7, 1000] {
            let (b, t, ended) = decode(Framing::Chunked, wire, step).unwrap();
            assert_eq!(b, b"hello world", "step {step}");
            let t = t.expect("trailers");
            assert_eq!(t["x-t"], "1");
            assert_eq!(t["x-u"], "two");
            assert!(ended);
        }
        let (b, t, _) = decode(Framing::Chunked, b"A\r\n0123456789\r\n0\r\n\r\n", 4).unwrap();
        assert_eq!(b, b"0123456789");
        assert!(t.is_none());
    }

    #[test]
    fn bad_chunk_sizes_are_refused() {
        for wire in [
            &b"x\r\nhello\r\n0\r\n\r\n"[..],
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"5;a\x01b\r\nhello\r\n0\r\n\r\n",
            b"10000000000000000\r\n",
            b"fffffffffffffffff\r\n",
        ] {
            assert_eq!(
                decode(Framing::Chunked, wire, 3).err(),
                Some(BodyError::ChunkSize),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        assert_eq!(
            decode(Framing::Chunked, b"5\r\nhelloXX0\r\n\r\n", 3).err(),
            Some(BodyError::ChunkEnd)
        );
        let long = [b"5;".as_slice(), &[b'a'; MAX_CHUNK_LINE]].concat();
        assert_eq!(
            decode(Framing::Chunked, &long, 512).err(),
            Some(BodyError::ChunkLineTooLong)
        );
        assert_eq!(
            decode(Framing::Chunked, b"5\r\nhel", 2).err(),
            Some(BodyError::Truncated)
        );
        assert_eq!(
            decode(Framing::Chunked, b"0\r\nbad header\r\n\r\n", 100).err(),
            Some(BodyError::Trailers)
        );
    }

    #[test]
    fn close_delimited_reads_to_eof() {
        let (b, _, ended) = decode(Framing::Close, b"all of it", 4).unwrap();
        assert_eq!(b, b"all of it");
        assert!(!ended, "ended by the close, not by framing");
    }

    #[test]
    fn encoder_chunks_and_checks_lengths() {
        let mut out = Pieces::new();
        let mut e = Encoder::Chunked;
        e.data(Bytes::from_static(b"hello"), &mut out).unwrap();
        e.data(Bytes::new(), &mut out).unwrap();
        let mut t = HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        e.end(Some(&t), &mut out).unwrap();
        let wire: Vec<u8> = out.iter().flat_map(|b| b.to_vec()).collect();
        assert_eq!(wire, b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n");
        let (b, t, _) = decode(Framing::Chunked, &wire, 3).unwrap();
        assert_eq!(b, b"hello");
        assert_eq!(t.unwrap()["grpc-status"], "0");

        let mut e = Encoder::Length(3);
        assert_eq!(
            e.data(Bytes::from_static(b"four"), &mut out),
            Err(BodyError::TooLong)
        );
        e.data(Bytes::from_static(b"ab"), &mut out).unwrap();
        assert_eq!(e.end(None, &mut out), Err(BodyError::TooShort));
    }
}
