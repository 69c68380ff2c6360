//! Raw HTTP/2 for hostile-client tests: frames and HPACK written by hand, so
//! a test can send what no well-behaved client library would (floods,
//! endless CONTINUATION, rapid resets, header blocks that decompress huge).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const CANCEL: u32 = 0x8;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame fits");
    let mut v = len.to_be_bytes()[1..].to_vec();
    v.extend([kind, flags]);
    v.extend(stream.to_be_bytes());
    v.extend(payload);
    v
}

/// An HPACK integer with an `n`-bit prefix, `first` holding the pattern bits.
pub fn hpack_int(mut value: usize, n: u32, first: u8) -> Vec<u8> {
    let max = (1usize << n) - 1;
    if value < max {
        return vec![first | value as u8];
    }
    let mut out = vec![first | max as u8];
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
    out
}

/// A literal header field, added to the dynamic table when `index` is set.
pub fn literal(name: &[u8], value: &[u8], index: bool) -> Vec<u8> {
    let mut out = vec![if index { 0x40 } else { 0x00 }];
    out.extend(hpack_int(name.len(), 7, 0));
    out.extend(name);
    out.extend(hpack_int(value.len(), 7, 0));
    out.extend(value);
    out
}

/// `GET /` over http with `:authority` `host` (static-table indexes).
pub fn get_block(host: &str, path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86]; // :method GET, :scheme http
    b.extend(literal(b":path", path.as_bytes(), false));
    b.extend(literal(b":authority", host.as_bytes(), false));
    b
}

/// A connection that has sent the preface and an empty SETTINGS frame.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.expect("preface");
    s
}

/// One frame as the peer sent it.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of RST_STREAM and GOAWAY.
    pub fn code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// What the peer sent until it closed or went quiet for `quiet`.
#[derive(Debug, Default)]
pub struct Received {
    pub frames: Vec<Frame>,
    pub closed: bool,
}

impl Received {
    pub fn goaway(&self) -> Option<&Frame> {
        self.frames.iter().find(|f| f.kind == GOAWAY)
    }

    pub fn of_kind(&self, kind: u8) -> impl Iterator<Item = &Frame> {
        self.frames.iter().filter(move |f| f.kind == kind)
    }
}

pub async fn read_frames(s: &mut TcpStream, quiet: Duration) -> Received {
    let mut buf = Vec::new();
    let mut chunk = vec![0; 64 * 1024];
    let mut closed = false;
    loop {
        match tokio::time::timeout(quiet, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    let mut frames = Vec::new();
    let mut i = 0;
    while i + 9 <= buf.len() {
        let len =
            usize::from(buf[i]) << 16 | usize::from(buf[i + 1]) << 8 | usize::from(buf[i + 2]);
        let end = (i + 9 + len).min(buf.len());
        frames.push(Frame {
            kind: buf[i + 3],
            flags: buf[i + 4],
            stream: u32::from_be_bytes([buf[i + 5], buf[i + 6], buf[i + 7], buf[i + 8]])
                & 0x7fff_ffff,
            payload: buf[i + 9..end].to_vec(),
        });
        i = end;
    }
    Received { frames, closed }
}

/// Resident memory of process `pid` in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}
