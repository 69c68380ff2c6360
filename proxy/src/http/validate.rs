//! Checks on a request head that hyper's parser leaves to the proxy, made
//! before anything is forwarded: smuggling shapes and header size limits.

use http::header::{self, HeaderMap};
use http::StatusCode;

/// Why a request is refused, with the status Envoy answers it with.
pub fn check(
    h: &HeaderMap,
    version: http::Version,
    max_headers_bytes: usize,
) -> Result<(), StatusCode> {
    if header_bytes(h) > max_headers_bytes {
        return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    if version == http::Version::HTTP_11 || version == http::Version::HTTP_10 {
        let te = h.get_all(header::TRANSFER_ENCODING);
        let mut te_present = false;
        for v in te.iter() {
            te_present = true;
            // Only `chunked` is a coding a proxy can pass on; Envoy answers 501.
            if !v.as_bytes().eq_ignore_ascii_case(b"chunked") {
                return Err(StatusCode::NOT_IMPLEMENTED);
            }
        }
        // Content-Length beside Transfer-Encoding is the classic smuggling
        // shape; Envoy refuses it unless `allow_chunked_length` is set.
        if te_present && h.contains_key(header::CONTENT_LENGTH) {
            return Err(StatusCode::BAD_REQUEST);
        }
    }
    Ok(())
}

/// The size Envoy counts against `max_request_headers_kb`: names and values.
pub fn header_bytes(h: &HeaderMap) -> usize {
    h.iter().map(|(k, v)| k.as_str().len() + v.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn content_length_with_chunked_is_refused() {
        let h = map(&[("transfer-encoding", "chunked"), ("content-length", "4")]);
        assert_eq!(
            check(&h, http::Version::HTTP_11, 60 * 1024),
            Err(StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn unknown_transfer_coding_is_not_implemented() {
        let h = map(&[("transfer-encoding", "gzip, chunked")]);
        assert_eq!(
            check(&h, http::Version::HTTP_11, 60 * 1024),
            Err(StatusCode::NOT_IMPLEMENTED)
        );
    }

    #[test]
    fn header_bytes_over_the_limit_are_431() {
        let h = map(&[("x-a", "0123456789")]);
        assert_eq!(check(&h, http::Version::HTTP_11, 13), Ok(()));
        assert_eq!(
            check(&h, http::Version::HTTP_11, 12),
            Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
    }
}
