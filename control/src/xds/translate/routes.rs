//! Virtual services → Envoy routes: a virtual router's routes, or straight
//! to the virtual node that provides the service.

use serde_json::{json, Value};

use super::{cluster, duration_ms, Ctx, ResourceSet};
use crate::xds::spec::{
    GrpcMatch, HeaderMatch, HttpMatch, RetryPolicy, RouteAction, RouteSpec, Timeout,
};

/// What one port of a virtual service turns into on the egress listener.
pub(super) struct Target {
    pub port: u32,
    /// The service's first port also answers to the bare service name.
    pub first: bool,
    /// Set for TCP ports, which are proxied without HTTP routes.
    pub tcp: Option<TcpTarget>,
    pub routes: Vec<Value>,
}

pub(super) struct TcpTarget {
    pub clusters: Vec<(String, u32)>,
    pub idle_ms: Option<u64>,
}

/// App Mesh's order: lower `priority` first, unset last; then the more
/// specific match (see [`Specificity`]); then by name.
pub(super) fn route_order(a: &(String, RouteSpec), b: &(String, RouteSpec)) -> std::cmp::Ordering {
    let key = |r: &RouteSpec| {
        let http = r.http_route.as_ref().or(r.http2_route.as_ref());
        let spec = match (http, &r.grpc_route) {
            (Some(h), _) => Specificity::of_http(&h.matcher),
            (None, Some(g)) => Specificity::of_grpc(&g.matcher),
            (None, None) => Specificity::default(),
        };
        (r.priority.unwrap_or(u32::MAX), spec)
    };
    key(&a.1).cmp(&key(&b.1)).then(a.0.cmp(&b.0))
}

/// How specific a route's match is; the more specific sorts first, so that
/// a route without `priority` is not shadowed by a broader one listed
/// before it (a `/` prefix would otherwise hide every exact path). App Mesh
/// documents only that it sorts unprioritised routes by length; trellis
/// orders by path kind first, as gateways that sort by specificity do: an
/// exact path, then a regex, then a prefix; within a kind the longer
/// pattern; then the match with more other criteria (a gateway route's
/// hostname, method, headers, query parameters, port; gRPC service, method
/// and metadata), so that `/` for one host is not hidden by `/` for all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Specificity {
    kind: PathKind,
    longer: std::cmp::Reverse<usize>,
    criteria: std::cmp::Reverse<usize>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
enum PathKind {
    Exact,
    Regex,
    #[default]
    Prefix,
}

impl Specificity {
    pub(super) fn of_http(m: &HttpMatch) -> Specificity {
        let path = m.path.as_ref();
        let (kind, pattern) = match (
            path.and_then(|p| p.exact.as_ref()),
            path.and_then(|p| p.regex.as_ref()),
        ) {
            (Some(e), _) => (PathKind::Exact, e.len()),
            (None, Some(r)) => (PathKind::Regex, r.len()),
            (None, None) => (PathKind::Prefix, m.prefix.as_ref().map_or(0, String::len)),
        };
        let criteria = usize::from(m.method.is_some())
            + usize::from(m.hostname.is_some())
            + usize::from(m.port.is_some())
            + usize::from(m.scheme.is_some())
            + m.headers.len()
            + m.query_parameters.len();
        Specificity {
            kind,
            longer: std::cmp::Reverse(pattern),
            criteria: std::cmp::Reverse(criteria),
        }
    }

    pub(super) fn of_grpc(m: &GrpcMatch) -> Specificity {
        let criteria = usize::from(m.service_name.is_some())
            + usize::from(m.method_name.is_some())
            + usize::from(m.hostname.is_some())
            + usize::from(m.port.is_some())
            + m.metadata.len();
        Specificity {
            criteria: std::cmp::Reverse(criteria),
            ..Specificity::default()
        }
    }
}

pub(super) fn service_targets(ctx: &Ctx<'_>, set: &mut ResourceSet, service: &str) -> Vec<Target> {
    let Some(provider) = ctx.service(service).and_then(|s| s.provider.as_ref()) else {
        return Vec::new();
    };
    if let Some(node) = &provider.virtual_node {
        return node_targets(ctx, set, &node.virtual_node_name);
    }
    let Some(router_name) = provider
        .virtual_router
        .as_ref()
        .map(|r| &r.virtual_router_name)
    else {
        return Vec::new();
    };
    let Some(router) = ctx.router(router_name) else {
        return Vec::new();
    };
    let mut routes: Vec<(String, RouteSpec)> = ctx.routes(router_name).to_vec();
    routes.sort_by(route_order);
    let mut out = Vec::new();
    for (i, l) in router.listeners.iter().enumerate() {
        let (port, protocol) = (l.port_mapping.port, l.port_mapping.protocol.as_str());
        let mut target = Target {
            port,
            first: i == 0,
            tcp: None,
            routes: Vec::new(),
        };
        for (_, r) in &routes {
            match protocol {
                "tcp" => {
                    let Some(tcp) = &r.tcp_route else { continue };
                    if tcp
                        .matcher
                        .as_ref()
                        .and_then(|m| m.port)
                        .is_some_and(|p| p != port)
                    {
                        continue;
                    }
                    let clusters = weighted(ctx, set, &tcp.action);
                    if clusters.is_empty() || target.tcp.is_some() {
                        continue;
                    }
                    target.tcp = Some(TcpTarget {
                        clusters,
                        idle_ms: tcp
                            .timeout
                            .as_ref()
                            .and_then(|t| t.idle)
                            .and_then(|d| d.millis()),
                    });
                }
                "grpc" => {
                    let Some(g) = &r.grpc_route else { continue };
                    if g.matcher.port.is_some_and(|p| p != port) {
                        continue;
                    }
                    if let Some(route) = route(
                        ctx,
                        set,
                        grpc_match(&g.matcher),
                        &g.action,
                        g.retry_policy.as_ref(),
                        g.timeout.as_ref(),
                    ) {
                        target.routes.push(route);
                    }
                }
                _ => {
                    let h = if protocol == "http2" {
                        &r.http2_route
                    } else {
                        &r.http_route
                    };
                    let Some(h) = h else { continue };
                    if h.matcher.port.is_some_and(|p| p != port) {
                        continue;
                    }
                    if let Some(route) = route(
                        ctx,
                        set,
                        http_match(&h.matcher),
                        &h.action,
                        h.retry_policy.as_ref(),
                        h.timeout.as_ref(),
                    ) {
                        target.routes.push(route);
                    }
                }
            }
        }
        if target.tcp.is_some() || !target.routes.is_empty() {
            out.push(target);
        }
    }
    out
}

/// A service provided by a virtual node: each of its listeners, straight.
fn node_targets(ctx: &Ctx<'_>, set: &mut ResourceSet, node: &str) -> Vec<Target> {
    let Some(spec) = ctx.node(node) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, l) in spec.listeners.iter().enumerate() {
        let port = l.port_mapping.port;
        let Some(c) = cluster::egress(ctx, set, node, Some(port)) else {
            continue;
        };
        let tcp = l.port_mapping.protocol == "tcp";
        out.push(Target {
            port,
            first: i == 0,
            tcp: tcp.then(|| TcpTarget {
                clusters: vec![(c.clone(), 1)],
                idle_ms: None,
            }),
            routes: if tcp {
                Vec::new()
            } else {
                vec![json!({"match": {"prefix": "/"},
                    "route": {"cluster": c, "retry_policy": default_retry_policy()}})]
            },
        });
    }
    out
}

/// Weighted targets → (cluster, weight), dropping zero weights and targets
/// without a matching listener (App Mesh refuses traffic to them too).
pub(super) fn weighted(
    ctx: &Ctx<'_>,
    set: &mut ResourceSet,
    action: &RouteAction,
) -> Vec<(String, u32)> {
    action
        .weighted_targets
        .iter()
        .filter(|t| t.weight > 0)
        .filter_map(|t| {
            Some((
                cluster::egress(ctx, set, &t.virtual_node, t.port)?,
                t.weight,
            ))
        })
        .collect()
}

/// The `route` of a route: one cluster or weighted clusters.
pub(super) fn cluster_action(clusters: &[(String, u32)]) -> Option<Value> {
    match clusters {
        [] => None,
        [(one, _)] => Some(json!({"cluster": one})),
        many => Some(json!({"weighted_clusters": {"clusters": many
            .iter()
            .map(|(name, weight)| json!({"name": name, "weight": weight}))
            .collect::<Vec<_>>()}})),
    }
}

pub(super) fn route(
    ctx: &Ctx<'_>,
    set: &mut ResourceSet,
    matcher: Value,
    action: &RouteAction,
    retry: Option<&RetryPolicy>,
    timeout: Option<&Timeout>,
) -> Option<Value> {
    let mut a = cluster_action(&weighted(ctx, set, action))?;
    if let Some(t) = timeout {
        if let Some(ms) = t.per_request.and_then(|d| d.millis()) {
            a["timeout"] = duration_ms(ms);
        }
        if let Some(ms) = t.idle.and_then(|d| d.millis()) {
            a["idle_timeout"] = duration_ms(ms);
        }
    }
    a["retry_policy"] = retry.map_or_else(default_retry_policy, retry_policy);
    Some(json!({"match": matcher, "route": a}))
}

/// The policy App Mesh gave every HTTP, HTTP/2 and gRPC route without one
/// of its own, virtual node providers' included (its "Envoy defaults set by
/// App Mesh" page): two retries on a 503, gRPC `UNAVAILABLE`, a connect
/// failure, a refused stream or a reset.
pub(super) fn default_retry_policy() -> Value {
    json!({
        "retry_on": "connect-failure,refused-stream,reset,retriable-status-codes,unavailable",
        "retriable_status_codes": [503],
        "num_retries": 2,
    })
}

/// App Mesh's retry events in Envoy's `retry_on` vocabulary. The API
/// refuses unknown events and a policy without any, so every policy here
/// retries on something.
fn retry_policy(p: &RetryPolicy) -> Value {
    let mut on: Vec<&str> = Vec::new();
    for e in &p.http_retry_events {
        match e.as_str() {
            "server-error" => on.push("5xx"),
            "gateway-error" => on.push("gateway-error"),
            "client-error" => on.push("retriable-4xx"),
            "stream-error" => on.push("refused-stream"),
            _ => {}
        }
    }
    for e in &p.tcp_retry_events {
        if e == "connection-error" {
            on.push("connect-failure");
        }
    }
    for e in &p.grpc_retry_events {
        match e.as_str() {
            "cancelled" | "deadline-exceeded" | "internal" | "resource-exhausted"
            | "unavailable" => on.push(e),
            _ => {}
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    on.retain(|e| seen.insert(*e));
    let mut r = json!({"retry_on": on.join(","), "num_retries": p.max_retries.unwrap_or(1)});
    if let Some(ms) = p.per_retry_timeout.and_then(|d| d.millis()) {
        r["per_try_timeout"] = duration_ms(ms);
    }
    r
}

fn string_match(m: &crate::xds::spec::ValueMatch) -> Option<Value> {
    if let Some(v) = &m.exact {
        Some(json!({"exact": v}))
    } else if let Some(v) = &m.prefix {
        Some(json!({"prefix": v}))
    } else if let Some(v) = &m.suffix {
        Some(json!({"suffix": v}))
    } else {
        m.regex
            .as_ref()
            .map(|v| json!({"safe_regex": {"regex": v}}))
    }
}

/// A header (or gRPC metadata) match; with no `match`, presence.
pub(super) fn header(h: &HeaderMatch) -> Value {
    let mut out = json!({"name": h.name});
    match &h.matcher {
        Some(m) if m.range.is_some() => {
            if let Some(r) = m.range {
                out["range_match"] =
                    json!({"start": r.start.to_string(), "end": r.end.to_string()});
            }
        }
        Some(m) => match string_match(m) {
            Some(s) => out["string_match"] = s,
            None => out["present_match"] = json!(true),
        },
        None => out["present_match"] = json!(true),
    }
    if h.invert == Some(true) {
        out["invert_match"] = json!(true);
    }
    out
}

/// Prefix, exact or regex path; headers; method and scheme as pseudo-headers;
/// query parameters. No path criterion means every path.
pub(super) fn http_match(m: &HttpMatch) -> Value {
    let mut out = match (&m.prefix, m.path.as_ref()) {
        (Some(p), _) => json!({"prefix": p}),
        (None, Some(p)) if p.exact.is_some() => json!({"path": p.exact}),
        (None, Some(p)) if p.regex.is_some() => json!({"safe_regex": {"regex": p.regex}}),
        _ => json!({"prefix": "/"}),
    };
    let mut headers: Vec<Value> = m.headers.iter().map(header).collect();
    if let Some(method) = &m.method {
        headers.push(json!({"name": ":method", "string_match": {"exact": method}}));
    }
    if let Some(scheme) = &m.scheme {
        headers.push(json!({"name": ":scheme", "string_match": {"exact": scheme}}));
    }
    if !headers.is_empty() {
        out["headers"] = json!(headers);
    }
    let query: Vec<Value> = m
        .query_parameters
        .iter()
        .map(
            |q| match q.matcher.as_ref().and_then(|m| m.exact.as_ref()) {
                Some(v) => json!({"name": q.name, "string_match": {"exact": v}}),
                None => json!({"name": q.name, "present_match": true}),
            },
        )
        .collect();
    if !query.is_empty() {
        out["query_parameters"] = json!(query);
    }
    out
}

/// gRPC: `/service/method` exactly, `/service/` as a prefix, or everything;
/// metadata are headers.
pub(super) fn grpc_match(m: &GrpcMatch) -> Value {
    let mut out = match (&m.service_name, &m.method_name) {
        (Some(s), Some(meth)) => json!({"path": format!("/{s}/{meth}")}),
        (Some(s), None) => json!({"prefix": format!("/{s}/")}),
        _ => json!({"prefix": "/"}),
    };
    if !m.metadata.is_empty() {
        out["headers"] = json!(m.metadata.iter().map(header).collect::<Vec<_>>());
    }
    out
}
