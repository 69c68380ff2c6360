//! Responses the proxy makes itself (404, 503, 504, ...), with Envoy's bodies,
//! and the gRPC form (trailers-only, `grpc-status`) when the request was gRPC.

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{self, Body};

pub fn reply(status: StatusCode, text: &'static str, grpc: bool) -> Response<Body> {
    if grpc {
        return grpc_reply(status, text);
    }
    let mut resp = Response::new(if text.is_empty() {
        body::empty()
    } else {
        body::full(text)
    });
    *resp.status_mut() = status;
    if !text.is_empty() {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    resp
}

/// Envoy maps the HTTP status of a local reply to a gRPC status (the
/// mapping of grpc's http-grpc-status-mapping.md) and answers 200.
fn grpc_reply(status: StatusCode, text: &'static str) -> Response<Body> {
    grpc_from_http(status, text.as_bytes())
}

/// A local reply (direct response, redirect, error) to a gRPC request:
/// HTTP 200, trailers-only, the mapped `grpc-status`, the body as message.
pub fn grpc_from_http(status: StatusCode, message: &[u8]) -> Response<Body> {
    let code = match status.as_u16() {
        400 => "13",
        401 => "16",
        403 => "7",
        404 => "12",
        429 | 502 | 503 | 504 => "14",
        _ => "2",
    };
    let mut resp = Response::new(body::empty());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from_static(code));
    if !message.is_empty() {
        if let Ok(v) = HeaderValue::from_bytes(&percent_encode(message)) {
            h.insert("grpc-message", v);
        }
    }
    resp
}

/// `grpc-message` is percent-encoded outside printable ASCII (and `%`).
fn percent_encode(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len());
    for &b in m {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

pub const NO_HEALTHY_UPSTREAM: &str = "no healthy upstream";
pub const UPSTREAM_TIMEOUT: &str = "upstream request timeout";
pub const CONNECT_FAILURE: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection failure";
pub const CONNECT_TIMEOUT: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection timeout";
pub const OVERFLOW: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: overflow";
pub const RESET_BEFORE_HEADERS: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection termination";

/// The local reply when a stream outlives its maximum duration: 408, or for
/// gRPC a trailers-only DEADLINE_EXCEEDED, as Envoy answers.
pub fn duration_timeout(grpc: bool) -> Response<Body> {
    if grpc {
        let mut resp = Response::new(body::empty());
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from_static("4"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("downstream duration timeout"),
        );
        return resp;
    }
    reply(
        StatusCode::REQUEST_TIMEOUT,
        "downstream duration timeout",
        false,
    )
}
