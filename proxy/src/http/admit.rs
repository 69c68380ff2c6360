//! Per-connection request limits checked before a request is handled:
//! `max_requests_per_connection`, `max_headers_count` and
//! `max_request_headers_kb` on HTTP/2 (the HTTP/1 codec, `http/h1`, enforces
//! both while it parses a head), and the `stop_accepting_requests` overload
//! action.

use std::sync::atomic::{AtomicU32, Ordering};

use http::{header, HeaderValue, Request, Response, StatusCode, Version};

use super::conn::ConnInfo;
use super::local_reply::reply;
use super::Hcm;
use crate::body::Body;
use crate::overload::Action;

/// What the connection has served, for `max_requests_per_connection`.
#[derive(Debug, Default)]
pub struct RequestCount {
    served: AtomicU32,
    /// Woken once, when the last allowed request starts: the connection then
    /// drains (HTTP/2 GOAWAY; HTTP/1.1 closes after the response).
    pub reached: tokio::sync::Notify,
}

/// Why a request is not let in.
pub enum Refusal {
    /// Answered by the proxy without routing (boxed: refusals are rare).
    Reply(Box<Response<Body>>),
    /// HTTP/2 stream reset with this reason, as Envoy's codec does.
    Reset(h2::Reason),
}

impl Hcm {
    pub(super) fn admit<B>(&self, info: &ConnInfo, req: &Request<B>) -> Result<(), Refusal> {
        let cfg = &self.config;
        // Envoy's HTTP/2 codec resets such streams (INTERNAL_ERROR).
        if req.version() == Version::HTTP_2 {
            if req.headers().len() > cfg.max_headers_count as usize {
                self.shared.http2.header_overflow.inc();
                return Err(Refusal::Reset(h2::Reason::INTERNAL_ERROR));
            }
            let limit = cfg.max_request_headers_kb as usize * 1024;
            if super::validate::header_bytes(req.headers()) > limit {
                self.shared.http2.header_list_size_too_large.inc();
                return Err(Refusal::Reset(h2::Reason::INTERNAL_ERROR));
            }
        }
        if let Some(max) = cfg.max_requests_per_connection {
            let n = info.requests.served.fetch_add(1, Ordering::Relaxed) + 1;
            if n == max {
                self.stats.downstream_cx_max_requests_reached.inc();
                info.requests.reached.notify_one();
            }
        }
        if self
            .shared
            .overload
            .is_active(Action::StopAcceptingRequests)
        {
            self.stats.downstream_rq_total.inc();
            self.stats.downstream_rq_overload_close.inc();
            self.stats.downstream_rq.record(503);
            return Err(Refusal::Reply(Box::new(reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "envoy overloaded",
                false,
            ))));
        }
        Ok(())
    }

    /// An HTTP/1.1 answer to the last allowed request says it closes.
    pub(super) fn mark_last(&self, info: &ConnInfo, version: Version, resp: &mut Response<Body>) {
        let Some(max) = self.config.max_requests_per_connection else {
            return;
        };
        if version < Version::HTTP_2 && info.requests.served.load(Ordering::Relaxed) >= max {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
}
