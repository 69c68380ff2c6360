//! `envoy.filters.listener.http_inspector`: looks at the first bytes a client
//! sends (without consuming them) to tell HTTP/1.x and the HTTP/2 preface from
//! anything else, so filter chains can match `application_protocols`.

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// How long to wait for the first bytes. Server-first protocols (SMTP, MySQL)
/// send nothing, and they must not wait long to fall through to a TCP chain.
const INSPECT_TIMEOUT: Duration = Duration::from_millis(300);
/// Enough for a request line with a long path; Envoy also gives up after 8 KiB.
const MAX_PEEK: usize = 8192;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The detected protocols in Envoy's names: `["h2c"]`, `["http/1.1"]`,
/// `["http/1.0"]`, or none (TLS, opaque TCP, or nothing sent in time).
pub async fn application_protocols(stream: &TcpStream) -> &'static [&'static str] {
    let deadline = Instant::now() + INSPECT_TIMEOUT;
    let mut buf = vec![0u8; MAX_PEEK];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(left, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return &[],
        };
        match classify(&buf[..n]) {
            Some(p) => return p,
            None if n == MAX_PEEK || Instant::now() >= deadline => return &[],
            // peek returns at once while bytes are queued: wait for more.
            None => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// `Some` once the bytes decide; `None` while a longer prefix could still.
fn classify(b: &[u8]) -> Option<&'static [&'static str]> {
    let common = b.len().min(H2_PREFACE.len());
    if b[..common] == H2_PREFACE[..common] {
        return (b.len() >= H2_PREFACE.len()).then_some(&["h2c"]);
    }
    let Some(end) = b.windows(2).position(|w| w == b"\r\n") else {
        // A TLS record or other binary: the first byte is not a method letter.
        return (!b[0].is_ascii_uppercase()).then_some(&[]);
    };
    let line = &b[..end];
    let mut parts = line.split(|c| *c == b' ');
    let method = parts.next().unwrap_or_default();
    let version = line.rsplit(|c| *c == b' ').next().unwrap_or_default();
    if method.is_empty() || !method.iter().all(u8::is_ascii_uppercase) {
        return Some(&[]);
    }
    Some(match version {
        b"HTTP/1.1" => &["http/1.1"],
        b"HTTP/1.0" => &["http/1.0"],
        _ => &[],
    })
}

#[cfg(test)]
mod tests {
    use super::classify;

    #[test]
    fn classifies_first_bytes() {
        let empty: &[&str] = &[];
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Some(&["http/1.1"][..])
        );
        assert_eq!(classify(b"GET / HTTP/1.0\r\n"), Some(&["http/1.0"][..]));
        assert_eq!(classify(b"GET / HT"), None);
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(&["h2c"][..])
        );
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02]), Some(empty));
        assert_eq!(classify(b"hello world\r\n"), Some(empty));
    }
}
