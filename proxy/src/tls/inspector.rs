//! `envoy.filters.listener.tls_inspector`: peeks at the first bytes of a
//! connection, without consuming them, to tell TLS from plaintext and read
//! the ClientHello's SNI and ALPN for filter chain matching.

use std::time::Duration;

use tokio::net::TcpStream;

/// TLS records are at most 2^14 bytes plus header; a ClientHello spread over
/// more than this is not worth waiting for.
const MAX_HELLO: usize = 64 * 1024;

/// What the ClientHello said.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClientHelloFacts {
    pub server_name: Option<String>,
    pub alpn: Vec<String>,
}

/// The inspector's verdict on a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Inspection {
    Tls(ClientHelloFacts),
    /// Not a TLS ClientHello: `raw_buffer`.
    Plaintext,
    /// The peer closed before saying anything decisive.
    Closed,
    /// Nothing decisive within the listener filter timeout.
    TimedOut,
}

/// Peeks until the first bytes decide, bounded by `timeout` (Envoy's
/// `listener_filters_timeout`; `None` waits for as long as the peer does).
/// Like Envoy, it waits for the client's first bytes: a client that waits
/// for the server to speak first gets `TimedOut`.
pub async fn inspect(stream: &TcpStream, timeout: Option<Duration>) -> Inspection {
    let peek = peek_hello(stream);
    match timeout {
        Some(t) => tokio::time::timeout(t, peek)
            .await
            .unwrap_or(Inspection::TimedOut),
        None => peek.await,
    }
}

async fn peek_hello(stream: &TcpStream) -> Inspection {
    let mut buf = vec![0u8; 512];
    let mut have = 0;
    let mut backoff = Duration::from_millis(1);
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return Inspection::Closed,
            Ok(n) => n,
        };
        match parse(&buf[..n]) {
            Parse::Done(i) => return i,
            Parse::NeedMore(want) => {
                if want > buf.len() && buf.len() < MAX_HELLO {
                    buf.resize(want.min(MAX_HELLO), 0);
                } else if n == have {
                    // `peek` returns at once while any data is queued, so wait
                    // between peeks for the rest of the hello to arrive.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(20));
                }
                if n >= MAX_HELLO {
                    return Inspection::Tls(ClientHelloFacts::default());
                }
                have = n;
            }
        }
    }
}

enum Parse {
    Done(Inspection),
    /// At least this many bytes are needed.
    NeedMore(usize),
}

/// Reassembles the handshake message from TLS records, then reads it.
fn parse(data: &[u8]) -> Parse {
    // A TLS record: type 22 (handshake), version 3.x, then a ClientHello (1).
    if data.is_empty() {
        return Parse::NeedMore(1);
    }
    if data[0] != 0x16 {
        return Parse::Done(Inspection::Plaintext);
    }
    if data.len() >= 2 && data[1] != 0x03 {
        return Parse::Done(Inspection::Plaintext);
    }
    let mut hs = Vec::new();
    let mut pos = 0;
    loop {
        let Some(header) = data.get(pos..pos + 5) else {
            return Parse::NeedMore(pos + 5);
        };
        if header[0] != 0x16 {
            // The handshake message ended up truncated: TLS, facts unknown.
            return Parse::Done(Inspection::Tls(ClientHelloFacts::default()));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let Some(body) = data.get(pos + 5..pos + 5 + len) else {
            return Parse::NeedMore(pos + 5 + len);
        };
        hs.extend_from_slice(body);
        pos += 5 + len;
        if hs.len() >= 4 {
            if hs[0] != 0x01 {
                return Parse::Done(Inspection::Plaintext);
            }
            let msg_len =
                (usize::from(hs[1]) << 16) | (usize::from(hs[2]) << 8) | usize::from(hs[3]);
            if hs.len() >= 4 + msg_len {
                let facts = client_hello(&hs[4..4 + msg_len]).unwrap_or_default();
                return Parse::Done(Inspection::Tls(facts));
            }
        }
    }
}

/// A cursor over a ClientHello body; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

fn client_hello(body: &[u8]) -> Option<ClientHelloFacts> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    r.vec8()?; // session id
    r.vec16()?; // cipher suites
    r.vec8()?; // compression methods
    let mut facts = ClientHelloFacts::default();
    let Some(exts) = r.vec16() else {
        return Some(facts);
    };
    let mut exts = Reader(exts);
    while let (Some(ty), Some(data)) = (exts.u16(), exts.vec16()) {
        let mut d = Reader(data);
        match ty {
            0 => {
                // server_name: a list of (type, name); type 0 is host_name.
                let mut list = Reader(d.vec16()?);
                while let (Some(kind), Some(name)) = (list.u8(), list.vec16()) {
                    if kind == 0 {
                        facts.server_name = std::str::from_utf8(name)
                            .ok()
                            .map(|s| s.to_ascii_lowercase());
                        break;
                    }
                }
            }
            16 => {
                let mut list = Reader(d.vec16()?);
                while let Some(p) = list.vec8() {
                    facts.alpn.push(String::from_utf8_lossy(p).into_owned());
                }
            }
            _ => {}
        }
    }
    Some(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls writes it, for SNI and ALPN.
    fn hello(sni: &str, alpn: &[&str]) -> Vec<u8> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).expect("name");
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).expect("conn");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    #[test]
    fn reads_sni_and_alpn() {
        let h = hello("Api.Example.com", &["h2", "http/1.1"]);
        match parse(&h) {
            Parse::Done(Inspection::Tls(f)) => {
                assert_eq!(f.server_name.as_deref(), Some("api.example.com"));
                assert_eq!(f.alpn, vec!["h2", "http/1.1"]);
            }
            _ => panic!("not parsed as TLS"),
        }
    }

    #[test]
    fn partial_hello_asks_for_more_and_plaintext_is_recognised() {
        let h = hello("a.example", &[]);
        assert!(matches!(parse(&h[..3]), Parse::NeedMore(5)));
        assert!(matches!(parse(&h[..10]), Parse::NeedMore(n) if n == h.len()));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n"),
            Parse::Done(Inspection::Plaintext)
        ));
        assert!(matches!(
            parse(b"PRI * HTTP/2.0"),
            Parse::Done(Inspection::Plaintext)
        ));
    }
}
