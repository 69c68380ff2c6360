//! REST-JSON error replies in the form botocore parses: the type in
//! `x-amzn-ErrorType`, the text in a `message` member.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::error::ApiError;

pub fn json_response(
    status: u16,
    body: &serde_json::Value,
    request_id: &str,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let headers = resp.headers_mut();
    headers.insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = request_id.parse() {
        headers.insert("x-amzn-requestid", v);
    }
    resp
}

pub fn error_response(err: &ApiError, request_id: &str) -> Response<Full<Bytes>> {
    let body = json!({ "message": err.message });
    let mut resp = json_response(err.kind.status(), &body, request_id);
    resp.headers_mut().insert(
        "x-amzn-errortype",
        http::HeaderValue::from_static(err.kind.type_name()),
    );
    resp
}
