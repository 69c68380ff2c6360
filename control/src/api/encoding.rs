//! Percent-encoding as SigV4 and the REST-JSON protocol define it: only the
//! unreserved characters `A-Za-z0-9-_.~` pass through.

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

pub fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if unreserved(b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `None` for malformed escapes or bytes that are not UTF-8.
pub fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Decoded `(key, value)` pairs of a raw query string.
pub fn query_pairs(raw: &str) -> Option<Vec<(String, String)>> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let s = "a b/c%d~é";
        assert_eq!(encode(s, false), "a%20b%2Fc%25d~%C3%A9");
        assert_eq!(decode(&encode(s, false)).as_deref(), Some(s));
        assert_eq!(encode("/x y/", true), "/x%20y/");
        assert_eq!(decode("%zz"), None);
        assert_eq!(
            query_pairs("limit=1&nextToken=a%3Db").unwrap(),
            vec![
                ("limit".into(), "1".into()),
                ("nextToken".into(), "a=b".into())
            ]
        );
    }
}
