//! Text and JSON pages of the admin API.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use http::{Response, StatusCode};

use super::text;
use crate::body::{self, Body};
use crate::shared::Shared;
use crate::stats::{self, Scope, Visitor};

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

/// Process-wide stats that no scope owns.
fn server_stats(s: &Shared) -> impl Fn(&mut dyn Visitor) + '_ {
    move |v: &mut dyn Visitor| {
        let scope = Scope::new("server", None);
        // Envoy's `server.live`: 1 while the server passes health checks.
        let live = s.live.load(Ordering::Relaxed) && !s.health_failed.load(Ordering::Relaxed);
        v.gauge(&scope, "live", i64::from(live));
        v.gauge(&scope, "uptime", s.started.elapsed().as_secs() as i64);
        v.gauge(&scope, "concurrency", s.concurrency as i64);
        v.gauge(&scope, "state", s.state() as i64);
        v.gauge(
            &scope,
            "memory_allocated",
            crate::overload::resident_bytes(),
        );
        crate::access_log::visit_stats(v);
        crate::tracing_ctx::otlp::visit_stats(v);
    }
}

pub fn stats(s: &Shared, query: &str) -> Response<Body> {
    let filter = match query_param(query, "filter").filter(|f| !f.is_empty()) {
        Some(f) => match regex::Regex::new(&percent_decode(f)) {
            Ok(r) => Some(r),
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("Invalid regex: {e}\n")),
        },
        None => None,
    };
    if query_param(query, "format") == Some("json") {
        let body = stats::render_json(&s.store, &server_stats(s), filter.as_ref()).to_string();
        let mut r = Response::new(body::full(body));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        return r;
    }
    let out = stats::render_text(&s.store, &server_stats(s), filter.as_ref());
    text(StatusCode::OK, &out)
}

pub fn prometheus(s: &Shared) -> Response<Body> {
    let mut r = text(
        StatusCode::OK,
        &stats::render_prometheus(&s.store, &server_stats(s)),
    );
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

pub fn clusters(s: &Shared, query: &str) -> Response<Body> {
    let snap = s.snapshot.load();
    let mut names: Vec<_> = snap.clusters.iter().collect();
    names.sort_by(|a, b| a.name().cmp(b.name()));
    if query_param(query, "format") == Some("json") {
        let statuses: Vec<serde_json::Value> = names
            .iter()
            .map(|c| {
                let hosts: Vec<serde_json::Value> = c
                    .endpoints()
                    .endpoints
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "address": {"socket_address": {"address": e.addr.ip().to_string(), "port_value": e.addr.port()}},
                            "weight": e.weight,
                            "health_status": {
                                "eds_health_status": "HEALTHY",
                                "failed_active_health_check": e.health_flags() & crate::upstream::endpoint::FAILED_ACTIVE_HC != 0,
                                "failed_outlier_check": e.health_flags() & crate::upstream::endpoint::FAILED_OUTLIER_CHECK != 0,
                            },
                            "stats": [{"name": "rq_active", "value": e.active_requests().to_string(), "type": "GAUGE"}],
                        })
                    })
                    .collect();
                serde_json::json!({"name": c.name().as_ref(), "host_statuses": hosts})
            })
            .collect();
        let body = serde_json::json!({ "cluster_statuses": statuses }).to_string();
        return text(StatusCode::OK, &body);
    }
    let mut out = String::new();
    for c in names {
        let n = c.name();
        let _ = writeln!(out, "{n}::observability_name::{n}");
        for e in &c.endpoints().endpoints {
            let a = e.addr;
            let _ = writeln!(out, "{n}::{a}::rq_active::{}", e.active_requests());
            let _ = writeln!(out, "{n}::{a}::weight::{}", e.weight);
            let _ = writeln!(out, "{n}::{a}::health_flags::{}", e.health_flags_text());
        }
    }
    text(StatusCode::OK, &out)
}

pub fn listeners(s: &Shared, query: &str) -> Response<Body> {
    let snap = s.snapshot.load();
    if query_param(query, "format") == Some("json") {
        let list: Vec<serde_json::Value> = snap
            .listeners
            .iter()
            .map(|l| {
                serde_json::json!({
                    "name": l.name.as_ref(),
                    "local_address": {"socket_address": {"address": l.address.ip().to_string(), "port_value": l.address.port()}},
                })
            })
            .collect();
        return text(
            StatusCode::OK,
            &serde_json::json!({ "listener_statuses": list }).to_string(),
        );
    }
    let mut out = String::new();
    for l in &snap.listeners {
        let _ = writeln!(out, "{}::{}", l.name, l.address);
    }
    text(StatusCode::OK, &out)
}

pub fn server_info(s: &Shared) -> serde_json::Value {
    let up = format!("{}s", s.started.elapsed().as_secs());
    let state = s.state().name();
    serde_json::json!({
        "version": format!("trellis-proxy/{}", env!("CARGO_PKG_VERSION")),
        "state": state,
        "uptime_current_epoch": up,
        "uptime_all_epochs": up,
        "node": {"id": s.node.id, "cluster": s.node.cluster},
        "command_line_options": {
            "concurrency": s.concurrency,
            "drain_time": format!("{}s", s.drain_time.as_secs()),
        },
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
