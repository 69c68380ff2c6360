//! The life of one request: route lookup, the route's action, and the headers
//! Envoy adds on the way up and down.

use std::borrow::Cow;
use std::future::Future;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::Body as _;

use super::conn::ConnInfo;
use super::flags::ResponseFlags;
use super::forward::{forward, Attempt, Outcome};
use super::headers::{
    self, X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, X_ENVOY_ORIGINAL_HOST, X_ENVOY_ORIGINAL_PATH,
    X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS, X_ENVOY_UPSTREAM_SERVICE_TIME, X_FORWARDED_HOST, X_REQUEST_ID,
};
use super::local_reply::{self, reply};
use super::normalize;
use super::Hcm;
use crate::access_log::{self, Finish, Record, RequestTally, SavedRequest};
use crate::body::{self, Body};
use crate::config::hcm::{RouteSource, ServerHeader};
use crate::format::{Context, RequestHead, StreamInfo};
use crate::router::{
    Action, ClusterSpecifier, ClusterWeight, Forward, HostRewrite, Matched, WeightedTarget,
};
use crate::snapshot::Snapshot;
use crate::tracing_ctx::Trace;
use crate::upstream::{Cluster, ClusterMap};
use std::sync::Arc;

impl Hcm {
    /// A plain function around an `async` block, which holds the request's
    /// head and body once: an `async fn` would keep its argument and the
    /// parts taken from it side by side.
    pub(super) fn handle(
        self: Arc<Self>,
        info: Arc<ConnInfo>,
        req: Request<Body>,
    ) -> impl Future<Output = Response<Body>> + Send {
        let (mut parts, body) = req.into_parts();
        async move {
            let info = &*info;
            let stats = &self.stats;
            stats.downstream_rq_total.inc();
            if parts.version == http::Version::HTTP_2 {
                stats.downstream_rq_http2_total.inc();
            } else {
                stats.downstream_rq_http1_total.inc();
            }
            stats.downstream_rq_active.inc();
            let version = parts.version;
            let mut record = Record {
                info: StreamInfo::new(info.peer, Some(info.local)),
                saved: None,
                trace: None,
                response_idle: None,
            };
            record.info.protocol = Some(parts.version);
            record.info.connection_id = info.id;
            if let Some(tls) = &info.tls {
                record.info.downstream_peer_uri_san = tls.uri_san.clone().filter(|_| tls.verified);
                record.info.requested_server_name = tls.server_name.clone();
            }
            if let (Some(_), Some(t)) = (&self.tracer, &self.config.tracing) {
                record.trace = Some(Trace::start(&parts, info.scheme, &t.sampling));
            }
            let limit = self.config.max_request_headers_kb as usize * 1024;
            if let Err(status) = super::validate::check(&parts.headers, parts.version, limit) {
                let mut resp = reply(status, "", false);
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                stats.downstream_rq.record(status.as_u16());
                // Envoy's HTTP/1 codec refuses an oversized head itself.
                if status == http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE {
                    stats.downstream_cx_protocol_error.inc();
                }
                stats.downstream_rq_active.dec();
                return resp;
            }
            let grpc = is_grpc(&parts.headers);
            let request_id = parts.headers.get(&X_REQUEST_ID).cloned();
            // Telemetry hook: access logs read the request after it has gone.
            let logging = !self.config.access_logs.is_empty();
            if logging {
                record.saved = Some(SavedRequest::new(&parts, info.scheme));
            }
            let tally = logging.then(Arc::<RequestTally>::default);
            let body = match &tally {
                Some(t) => access_log::count_request(body, t.clone(), &record.info),
                None => body,
            };
            // Only a request whose body is still to come can time out reading it.
            let mut timed_out = None;
            let body = match self.config.request_timeout {
                Some(t) if !body.is_end_stream() => {
                    let deadline = tokio::time::Instant::from_std(record.info.started) + t;
                    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    timed_out = Some(flag.clone());
                    body::with_deadline(body, deadline, flag)
                }
                _ => body,
            };
            let (mut resp, mut flags) = self.route(info, &mut record, &mut parts, body, grpc).await;
            if timed_out.is_some_and(|t| t.load(std::sync::atomic::Ordering::Relaxed)) {
                // The client was too slow sending its request: Envoy's 408.
                resp = reply(StatusCode::REQUEST_TIMEOUT, "request timeout", grpc);
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                flags = ResponseFlags::default();
                self.stats.downstream_rq_timeout.inc();
            }
            self.finish_response(&mut resp, request_id);
            if info.closing.load(std::sync::atomic::Ordering::Relaxed)
                && version != http::Version::HTTP_2
            {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            stats.downstream_rq.record(resp.status().as_u16());
            stats.downstream_rq_active.dec();
            if let (Some(mesh), true) = (&self.mesh, self.inbound) {
                mesh.downstream(
                    record.info.downstream_peer_uri_san.as_deref(),
                    resp.status().as_u16(),
                    record.info.started.elapsed(),
                );
            }
            record.info.flags.set(flags);
            record.info.response_code = Some(resp.status().as_u16());
            access_log::finish_response(
                resp,
                Finish {
                    record,
                    stats: self.stats.clone(),
                    tally,
                    logs: self.config.access_logs.clone(),
                    tracer: self.tracer.clone(),
                },
            )
        }
    }

    async fn route(
        &self,
        info: &ConnInfo,
        record: &mut Record,
        parts: &mut http::request::Parts,
        body: Body,
        grpc: bool,
    ) -> (Response<Body>, ResponseFlags) {
        let snapshot = self.shared.snapshot.load_full();
        let table = match &self.config.routes {
            RouteSource::Static(t) => t,
            RouteSource::Rds(rds) => match snapshot.routes.get(&rds.name) {
                Some(t) => t,
                None => return self.no_route(grpc),
            },
        };
        let request_host = RequestHost::of(parts);
        let mut host = Cow::Borrowed(request_host.as_str());
        if let Some(stripped) =
            normalize::strip_port(&host, self.config.strip_port, info.local.port())
        {
            let stripped = stripped.to_string();
            set_authority(parts, &stripped);
            host = Cow::Owned(stripped);
        }
        if self.config.normalize_path || self.config.merge_slashes {
            let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            if let Some(p) =
                normalize::path(pq, self.config.normalize_path, self.config.merge_slashes)
            {
                set_path(parts, &p);
            }
        }
        let Some(matched) = table.find(&host, parts) else {
            return self.no_route(grpc);
        };
        if !matched.route.name.is_empty() {
            record.info.route_name = Some(Arc::from(matched.route.name.as_str()));
        }
        // The HTTP filters before the router: fault injection, rate limits.
        if !self.config.filters.is_empty() {
            let req = crate::filters::Request {
                parts,
                host: &host,
                matched: &matched,
            };
            let stats = &self.filter_stats;
            // Boxed, like the other rare paths below, to keep them out of
            // every request's future.
            if let Some(reply) = Box::pin(crate::filters::run(
                &self.config.filters,
                &req,
                stats,
                &mut record.info.flags,
            ))
            .await
            {
                return reply;
            }
        }
        match &matched.route.action {
            Action::DirectResponse(d) => {
                self.stats.rq_direct_response.inc();
                let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                let location = d.location(info.scheme, &host, pq);
                let mut resp = if grpc {
                    local_reply::grpc_from_http(d.status, &d.body)
                } else {
                    let mut resp = Response::new(body::full(d.body.clone()));
                    *resp.status_mut() = d.status;
                    if !d.body.is_empty() {
                        resp.headers_mut()
                            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                    }
                    resp
                };
                if let Some(v) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                matched.apply_response_headers(resp.headers_mut(), &record.ctx());
                (resp, ResponseFlags::default())
            }
            Action::Redirect(r) => {
                self.stats.rq_redirect.inc();
                let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                let (status, location) = r.location(info.scheme, &host, pq);
                let mut resp = if grpc {
                    local_reply::grpc_from_http(status, b"")
                } else {
                    let mut resp = Response::new(body::empty());
                    *resp.status_mut() = status;
                    resp
                };
                if let Ok(v) = HeaderValue::from_str(&location) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                matched.apply_response_headers(resp.headers_mut(), &record.ctx());
                (resp, ResponseFlags::default())
            }
            Action::Forward(f) => {
                let upgrade = is_upgrade(parts);
                if upgrade && !self.config.websocket {
                    self.stats.downstream_rq_ws_on_non_ws_route.inc();
                    return (
                        reply(StatusCode::FORBIDDEN, "", false),
                        ResponseFlags::default(),
                    );
                }
                self.forward(
                    info, record, &snapshot, &matched, f, &host, parts, body, grpc, upgrade,
                )
                .await
            }
        }
    }

    fn no_route(&self, grpc: bool) -> (Response<Body>, ResponseFlags) {
        self.stats.no_route.inc();
        let mut flags = ResponseFlags::default();
        flags.set(ResponseFlags::NO_ROUTE_FOUND);
        (reply(StatusCode::NOT_FOUND, "", grpc), flags)
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        info: &ConnInfo,
        record: &mut Record,
        snapshot: &Snapshot,
        matched: &Matched<'_>,
        f: &Forward,
        host: &str,
        parts: &mut http::request::Parts,
        body: Body,
        grpc: bool,
        upgrade: bool,
    ) -> (Response<Body>, ResponseFlags) {
        let (cluster, weighted) = pick_cluster(f, matched, &parts.headers, &snapshot.clusters);
        let Some(cluster) = cluster else {
            let (mut resp, flags) = self.no_cluster(f.cluster_not_found_status, grpc);
            matched.apply_response_headers(resp.headers_mut(), &record.ctx());
            return (resp, flags);
        };
        record.info.upstream_cluster = Some(cluster.name().clone());
        // ORIGINAL_DST clusters read the destination from the request (sidecar hook).
        if cluster.is_original_dst() {
            if let Some(d) = Box::pin(super::explicit::destination(info, parts)).await {
                parts.extensions.insert(d);
            }
        }
        if parts.method == http::Method::CONNECT {
            let resp = Box::pin(super::explicit::connect(
                self.config.connect,
                cluster,
                parts,
            ))
            .await;
            return (resp, ResponseFlags::default());
        }
        let downstream_upgrade = if upgrade {
            parts.extensions.remove::<super::h1::server::OnUpgrade>()
        } else {
            None
        };

        let peek_body = parts.version != http::Version::HTTP_2
            && parts.headers.contains_key(header::TRANSFER_ENCODING);
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        let internal = headers::forwarded(&self.config, &mut parts.headers, info.peer, info.scheme);
        if let Some(via) = &self.config.via {
            parts.headers.append(header::VIA, via.clone());
        }
        // The path sent upstream when the route rewrites it; otherwise the
        // request's own path goes up as it came, without a copy.
        let rewritten = {
            let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            f.rewrite_path(pq).inspect(|_| {
                if let Ok(v) = HeaderValue::from_str(pq) {
                    parts.headers.insert(X_ENVOY_ORIGINAL_PATH.clone(), v);
                }
            })
        };
        let upstream_host: Cow<'_, str> = match (
            &f.host_rewrite,
            weighted.and_then(|w| w.host_rewrite.as_ref()),
        ) {
            (_, Some(h)) => Cow::Borrowed(h),
            (Some(HostRewrite::Literal(h)), _) => Cow::Borrowed(h),
            (Some(HostRewrite::Header(name)), _) => Cow::Owned(
                parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(host)
                    .to_string(),
            ),
            _ => Cow::Borrowed(host),
        };
        let auto_host = matches!(f.host_rewrite, Some(HostRewrite::Auto));
        if upstream_host != *host {
            if let Ok(v) = HeaderValue::from_str(host) {
                if f.append_x_forwarded_host {
                    parts.headers.append(X_FORWARDED_HOST.clone(), v.clone());
                }
                parts.headers.insert(X_ENVOY_ORIGINAL_HOST.clone(), v);
            }
        }
        {
            let no_headers = http::HeaderMap::new();
            let ctx = Context {
                request: Some(RequestHead {
                    method: &parts.method,
                    uri: &parts.uri,
                    scheme: info.scheme,
                    headers: &no_headers,
                }),
                ..Context::new(&record.info)
            };
            if let Some(w) = weighted {
                w.headers
                    .request
                    .apply(&mut parts.headers, &ctx, crate::router::Phase::Request);
            }
            matched.apply_request_headers(&mut parts.headers, &ctx);
        }

        let timeout = route_timeout(f, &parts.headers, internal);
        let max_duration = stream_duration(f, &parts.headers, grpc);
        headers::strip_envoy_controls(&mut parts.headers);
        if let Some(t) = timeout {
            parts
                .headers
                .insert(X_ENVOY_EXPECTED_RQ_TIMEOUT_MS.clone(), headers::millis(t));
        }
        let proto = if upgrade {
            crate::upstream::Protocol::Http1
        } else {
            cluster.protocol(parts.version)
        };
        let uri = match proto {
            crate::upstream::Protocol::Http1 => {
                let same_host = parts
                    .headers
                    .get(header::HOST)
                    .is_some_and(|v| v.as_bytes() == upstream_host.as_bytes());
                if !same_host {
                    if let Ok(v) = HeaderValue::from_str(&upstream_host) {
                        parts.headers.insert(header::HOST, v);
                    }
                }
                match &rewritten {
                    Some(path) => Uri::try_from(path.as_str()),
                    None => Ok(origin_form(&parts.uri)),
                }
            }
            crate::upstream::Protocol::Http2 => {
                parts.headers.remove(header::HOST);
                let path = rewritten
                    .as_deref()
                    .unwrap_or_else(|| parts.uri.path_and_query().map_or("/", |p| p.as_str()));
                Uri::try_from(format!("http://{upstream_host}{path}"))
            }
        };
        let Ok(uri) = uri else {
            return (
                reply(StatusCode::BAD_REQUEST, "", grpc),
                ResponseFlags::default(),
            );
        };
        parts.uri = uri;
        if upgrade {
            parts.version = http::Version::HTTP_11;
        }

        // Envoy sends an explicit zero length for a bodiless POST, PUT or PATCH.
        if body.is_end_stream()
            && matches!(
                parts.method,
                http::Method::POST | http::Method::PUT | http::Method::PATCH
            )
            && !parts.headers.contains_key(header::CONTENT_LENGTH)
        {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        // Access logs and response header values read the request as sent.
        if record.saved.is_some() || matched.response_reads_request() {
            record.saved = Some(SavedRequest::new(parts, info.scheme));
        }
        let started = record.info.started;
        let retry = if upgrade {
            None
        } else {
            f.retry_policy.as_ref()
        };
        // Shadow copies (request_mirror_policies), fire and forget.
        let body = if f.resilience.mirrors.is_empty() {
            body
        } else {
            Box::pin(crate::filters::mirror::tee(
                &f.resilience.mirrors,
                &snapshot.clusters,
                parts,
                &upstream_host,
                body,
            ))
            .await
        };
        // RING_HASH / MAGLEV key from the route's hash policy.
        let hash = if f.resilience.hash_policy.is_empty() {
            None
        } else {
            f.resilience
                .hash_policy
                .hash(&parts.headers, parts.uri.query(), info.peer.ip())
        };
        // A route's idle_timeout overrides the connection manager's; zero disables.
        let idle = match f.idle_timeout {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => self.config.stream_idle_timeout,
        };
        // A bodiless request's route timeout (or maximum duration) ends its
        // wait for the response head before a longer idle timeout could, so
        // that wait needs no idle timer of its own.
        let bound = match (timeout, max_duration) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let wait_idle = idle.filter(|i| !(body.is_end_stream() && bound.is_some_and(|b| b < *i)));
        let head = std::mem::replace(parts, Request::new(()).into_parts().0);
        let attempt = Attempt {
            retry,
            timeout,
            grpc,
            auto_host,
            peek_body,
            max_duration,
            hash,
            request_attempt_count: matched.virtual_host.request_attempt_count,
            trace: record.trace.as_mut(),
            started,
        };
        // The request's future is pinned here and lent to the idle watch, so
        // it is built in this future's state and never moved.
        let sent = {
            let (watch, body) = super::stream_idle::Watch::new(wait_idle, body);
            let sending = std::pin::pin!(forward(cluster, head, body, attempt));
            watch.run(sending).await
        };
        let Outcome {
            mut response,
            flags,
            upstream,
            upstream_local,
            attempts,
            answered,
            via_upstream,
        } = match sent {
            Ok(outcome) => outcome,
            Err(t) => {
                self.stats.downstream_rq_idle_timeout.inc();
                let mut flags = ResponseFlags::default();
                flags.set(ResponseFlags::STREAM_IDLE_TIMEOUT);
                return (
                    reply(t.status(), super::stream_idle::STREAM_TIMEOUT, grpc),
                    flags,
                );
            }
        };
        let answered = answered.unwrap_or_else(Instant::now);
        if let (Some(mesh), Some(service), Some(node)) = (
            &self.mesh,
            matched.appmesh_service(),
            cluster.config.appmesh_virtual_node.as_ref(),
        ) {
            mesh.upstream(
                service,
                node,
                response.status().as_u16(),
                answered - started,
            );
        }
        record.info.upstream_host = upstream.as_ref().map(|e| e.addr);
        record.info.upstream_local = upstream_local;
        record.info.upstream_attempts = attempts;
        if upstream.is_some() {
            record.info.first_upstream_byte = Some(answered - record.info.started);
        }
        if matched.virtual_host.response_attempt_count && attempts > 0 {
            response
                .headers_mut()
                .insert(headers::X_ENVOY_ATTEMPT_COUNT.clone(), attempts.into());
        }
        if via_upstream {
            response.headers_mut().insert(
                X_ENVOY_UPSTREAM_SERVICE_TIME.clone(),
                headers::millis(answered - started),
            );
        }
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(down) = downstream_upgrade {
                tunnel(down, &mut response);
            }
            self.stats.downstream_cx_upgrades_total.inc();
        } else {
            headers::strip_hop_by_hop(response.headers_mut(), false);
        }
        let ctx = record.ctx();
        if let Some(w) = weighted {
            w.headers
                .response
                .apply(response.headers_mut(), &ctx, crate::router::Phase::Response);
        }
        matched.apply_response_headers(response.headers_mut(), &ctx);
        if !response.body().is_end_stream() {
            record.response_idle = idle;
        }
        (response, flags)
    }

    fn no_cluster(&self, status: StatusCode, grpc: bool) -> (Response<Body>, ResponseFlags) {
        self.stats.no_cluster.inc();
        let mut flags = ResponseFlags::default();
        flags.set(ResponseFlags::NO_CLUSTER_FOUND);
        (reply(status, "", grpc), flags)
    }

    fn finish_response(&self, resp: &mut Response<Body>, request_id: Option<HeaderValue>) {
        let h = resp.headers_mut();
        if let Some(via) = &self.config.via {
            h.append(header::VIA, via.clone());
        }
        match self.config.server_header {
            ServerHeader::Overwrite => {
                h.insert(header::SERVER, self.config.server_name.clone());
            }
            ServerHeader::AppendIfAbsent => {
                if !h.contains_key(header::SERVER) {
                    h.insert(header::SERVER, self.config.server_name.clone());
                }
            }
            ServerHeader::PassThrough => {}
        }
        if self.config.always_set_request_id_in_response {
            if let Some(id) = request_id {
                h.insert(X_REQUEST_ID.clone(), id);
            }
        }
    }
}

/// The cluster a request goes to: named, from a header, or by weight (with
/// the per-request random value the route match used, as Envoy does), and the
/// weighted entry when there is one, for its own header mutations.
fn pick_cluster<'f, 'c>(
    f: &'f Forward,
    m: &Matched<'_>,
    h: &http::HeaderMap,
    clusters: &'c ClusterMap,
) -> (Option<&'c Arc<Cluster>>, Option<&'f ClusterWeight>) {
    let from_header = |name: &http::HeaderName| h.get(name).and_then(|v| v.to_str().ok());
    let (name, weighted) = match &f.cluster {
        ClusterSpecifier::Cluster(c) => (Some(c.as_str()), None),
        ClusterSpecifier::ClusterHeader(name) => (from_header(name), None),
        ClusterSpecifier::WeightedClusters(w) => {
            let picked = w.pick(m.random);
            let name = match &picked.target {
                WeightedTarget::Cluster(c) => Some(c.as_str()),
                WeightedTarget::ClusterHeader(name) => from_header(name),
            };
            (name, Some(picked))
        }
    };
    (name.and_then(|n| clusters.get(n)), weighted)
}

/// The route's timeout, or the client's `grpc-timeout` when the route allows it.
/// `x-envoy-upstream-rq-timeout-ms` from an internal client overrides the
/// route's timeout, as in Envoy.
fn route_timeout(f: &Forward, h: &http::HeaderMap, internal: bool) -> Option<Duration> {
    if internal {
        if let Some(ms) = h
            .get(&X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            return (ms > 0).then(|| Duration::from_millis(ms));
        }
    }
    f.timeout
}

/// The stream's maximum duration: the client's `grpc-timeout` when the route
/// honours it (capped at `grpc_timeout_header_max`), else the route's
/// `max_stream_duration`.
fn stream_duration(f: &Forward, h: &http::HeaderMap, grpc: bool) -> Option<Duration> {
    if grpc {
        if let Some(max) = f.grpc_timeout_header_max {
            if let Some(t) = h
                .get("grpc-timeout")
                .and_then(|v| parse_grpc_timeout(v.as_bytes()))
            {
                return Some(if max.is_zero() { t } else { t.min(max) });
            }
        }
    }
    f.max_stream_duration.filter(|d| !d.is_zero())
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Replaces the request's host wherever it lives (authority or `Host`).
fn set_authority(parts: &mut http::request::Parts, host: &str) {
    if parts.uri.authority().is_some() {
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let scheme = parts.uri.scheme_str().unwrap_or("http");
        if let Ok(uri) = Uri::try_from(format!("{scheme}://{host}{pq}")) {
            parts.uri = uri;
        }
    }
    if parts.headers.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(host) {
            parts.headers.insert(header::HOST, v);
        }
    }
}

fn set_path(parts: &mut http::request::Parts, path_and_query: &str) {
    let mut uri = parts.uri.clone().into_parts();
    if let Ok(pq) = http::uri::PathAndQuery::try_from(path_and_query) {
        uri.path_and_query = Some(pq);
        if let Ok(u) = Uri::from_parts(uri) {
            parts.uri = u;
        }
    }
}

/// The request's host (authority, else `Host`), sharing the request's bytes
/// instead of copying them.
enum RequestHost {
    Authority(http::uri::Authority),
    Header(HeaderValue),
    Missing,
}

impl RequestHost {
    fn of(parts: &http::request::Parts) -> RequestHost {
        if let Some(a) = parts.uri.authority() {
            return RequestHost::Authority(a.clone());
        }
        match parts.headers.get(header::HOST) {
            Some(v) if v.to_str().is_ok() => RequestHost::Header(v.clone()),
            _ => RequestHost::Missing,
        }
    }

    fn as_str(&self) -> &str {
        match self {
            RequestHost::Authority(a) => a.as_str(),
            RequestHost::Header(v) => v.to_str().unwrap_or_default(),
            RequestHost::Missing => "",
        }
    }
}

/// The path and query alone, as an HTTP/1.1 request line carries them.
fn origin_form(uri: &Uri) -> Uri {
    if uri.scheme().is_none() && uri.authority().is_none() {
        return uri.clone();
    }
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
}

fn is_grpc(h: &http::HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn is_upgrade(parts: &http::request::Parts) -> bool {
    parts.version == http::Version::HTTP_11
        && parts.headers.contains_key(header::UPGRADE)
        && parts
            .headers
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// After a 101, the two upgraded connections are spliced byte for byte.
fn tunnel(down: super::h1::server::OnUpgrade, resp: &mut Response<Body>) {
    let up = resp
        .extensions_mut()
        .remove::<super::h1::client::Upgrade>()
        .and_then(|u| u.take());
    let Some(mut up) = up else {
        return;
    };
    tokio::spawn(async move {
        let Some(mut d) = down.wait().await else {
            return;
        };
        let _ = tokio::io::copy_bidirectional(&mut d, &mut up).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(
            parse_grpc_timeout(b"100m"),
            Some(Duration::from_millis(100))
        );
        assert_eq!(parse_grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout(b"123456789S"), None);
        assert_eq!(parse_grpc_timeout(b"S"), None);
        assert_eq!(parse_grpc_timeout(b"10x"), None);
    }
}
