//! A virtual gateway: a listener per gateway listener, with its TLS, and a
//! route table built from the gateway routes of that listener's protocol.
//!
//! App Mesh's semantics, as its documentation states them:
//! - gateway routes are tried by `priority` (unset last), then the more
//!   specific match (exact path, regex, longest prefix), then name; one without a hostname match applies to every host,
//!   so it also joins the virtual hosts of the hostname matches;
//! - the Host becomes the target virtual service's name unless
//!   `defaultTargetHostname` is DISABLED; a matched prefix becomes `/` (see
//!   [`path`]) unless `defaultPrefix` is DISABLED or a `value` is given;
//! - a target served by a virtual router is routed by that router's routes
//!   after the gateway's rewrite ([`path`] folds them in); one served by a
//!   virtual node goes to the node;
//! - the gateway's `backendDefaults` client policy and each listener's
//!   `connectionPool` and `healthCheck` apply to the clusters that reach
//!   the mesh, so the gateway presents its own SVID to STRICT virtual nodes
//!   and stops sending to hosts that fail the check;
//! - paths are normalised (`normalize_path`, `merge_slashes`) and the
//!   gateway is the trust boundary for `X-Forwarded-*` (`use_remote_address`).
//!
//! A listener without gateway routes is still served, with an empty route
//! table: load balancers probe its port (App Mesh did the same).

mod path;

use std::collections::BTreeSet;

use serde_json::{json, Value};

use self::path::{Narrowed, PathMatch, Upstream};
use super::{
    appmesh_metadata, cluster, hcm, listener, routes, tls, Chain, Ctx, Fallback, ResourceSet,
};
use crate::xds::spec::{
    GatewayAction, GatewayGrpcRoute, GatewayHttpRoute, GatewayRouteSpec, GrpcMatch, HostnameMatch,
    RouteSpec, VirtualGatewaySpec,
};

pub(super) fn translate(ctx: &Ctx<'_>, name: &str, spec: &VirtualGatewaySpec) -> ResourceSet {
    let mut set = ResourceSet::default();
    let mut grs: Vec<(String, GatewayRouteSpec)> = ctx.gateway_routes(name).to_vec();
    grs.sort_by(gateway_route_order);
    let client_policy = spec
        .backend_defaults
        .as_ref()
        .and_then(|d| d.client_policy.as_ref())
        .and_then(|p| p.tls.as_ref());
    for l in &spec.listeners {
        let (port, protocol) = (l.port_mapping.port, l.port_mapping.protocol.as_str());
        let before: BTreeSet<String> = set.clusters.keys().cloned().collect();
        let routes: Vec<(Host, Value)> = grs
            .iter()
            .flat_map(|(_, gr)| gateway_route(ctx, &mut set, gr, protocol, port))
            .collect();
        // Clusters shared with an earlier listener keep its limits.
        let pool = l
            .connection_pool
            .as_ref()
            .and_then(|p| p.for_protocol(protocol));
        if let Some(limits) = pool {
            for (name, c) in set.clusters.iter_mut() {
                if !before.contains(name) {
                    cluster::circuit_breakers(c, limits);
                }
            }
        }
        // The listener's health check probes the hosts behind it, as the
        // listener's connection pool limits them.
        if let Some(hc) = &l.health_check {
            for (name, c) in set.clusters.iter_mut() {
                if !before.contains(name) {
                    cluster::add_health_check(c, hc);
                }
            }
        }
        tls::secure_new_clusters(&mut set, &before, client_policy);
        let rc = format!("rds_ingress_{protocol}_{port}");
        set.routes.insert(
            rc.clone(),
            json!({"name": rc, "virtual_hosts": virtual_hosts(&routes)}),
        );
        let alpn: &[&str] = if protocol == "http" {
            &["http/1.1"]
        } else {
            &["h2", "http/1.1"]
        };
        let lname = format!("lds_ingress_{}_{port}", ctx.ports.listener_address);
        set.listeners.insert(
            lname.clone(),
            listener(
                &lname,
                &ctx.ports.listener_address,
                port,
                "INBOUND",
                vec![Chain {
                    tls: tls::inbound(ctx, tls::Callers::AnyTrusted, l.tls.as_ref(), alpn),
                    name: format!("gateway_{protocol}_{port}"),
                    destination_port: None,
                    filter: edge_hcm(&format!("ingress_{protocol}_{port}"), &rc, spec),
                    metadata: None,
                }],
                Fallback::FirstChain,
            ),
        );
    }
    set
}

/// The connection manager of an edge: it faces clients from outside the
/// mesh.
fn edge_hcm(stat_prefix: &str, route_config: &str, spec: &VirtualGatewaySpec) -> Value {
    let mut filter = hcm(stat_prefix, route_config, spec.logging.as_ref());
    let config = &mut filter["typed_config"];
    config["use_remote_address"] = json!(true);
    config["normalize_path"] = json!(true);
    config["merge_slashes"] = json!(true);
    // Hostname matches ignore the port the client put in its Host.
    config["strip_any_host_port"] = json!(true);
    filter
}

/// App Mesh's order, as for a router's routes: lower `priority` first,
/// unset last; then the more specific match ([`routes::Specificity`]);
/// then by name.
fn gateway_route_order(
    a: &(String, GatewayRouteSpec),
    b: &(String, GatewayRouteSpec),
) -> std::cmp::Ordering {
    let key = |r: &GatewayRouteSpec| {
        let http = r.http_route.as_ref().or(r.http2_route.as_ref());
        let spec = match (http, &r.grpc_route) {
            (Some(h), _) => routes::Specificity::of_http(&h.matcher),
            (None, Some(g)) => routes::Specificity::of_grpc(&g.matcher),
            (None, None) => routes::Specificity::default(),
        };
        (r.priority.unwrap_or(u32::MAX), spec)
    };
    key(&a.1).cmp(&key(&b.1)).then(a.0.cmp(&b.0))
}

/// A gateway route's hostname criterion.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Host {
    Exact(String),
    Suffix(String),
    Any,
}

impl Host {
    fn of(h: Option<&HostnameMatch>) -> Host {
        match h {
            Some(HostnameMatch { exact: Some(e), .. }) => Host::Exact(e.to_ascii_lowercase()),
            Some(HostnameMatch {
                suffix: Some(s), ..
            }) => Host::Suffix(s.to_ascii_lowercase()),
            _ => Host::Any,
        }
    }

    fn domains(&self) -> Vec<String> {
        match self {
            Host::Exact(e) => vec![e.clone()],
            Host::Suffix(s) => vec![format!("*{s}")],
            Host::Any => vec!["*".into()],
        }
    }

    /// Whether every request of this virtual host meets `route`'s criterion.
    fn within(&self, route: &Host) -> bool {
        match (route, self) {
            (Host::Any, _) => true,
            (Host::Exact(r), Host::Exact(v)) => r == v,
            (Host::Suffix(r), Host::Exact(v)) => v.len() > r.len() && v.ends_with(r.as_str()),
            (Host::Suffix(r), Host::Suffix(v)) => v.ends_with(r.as_str()),
            _ => false,
        }
    }
}

/// A virtual host per hostname criterion (exact, then suffix, the
/// catch-all last), each with every route whose criterion covers it, in
/// route order: Envoy picks one virtual host, then tries only its routes.
fn virtual_hosts(routes: &[(Host, Value)]) -> Vec<Value> {
    let hosts: BTreeSet<&Host> = routes.iter().map(|(h, _)| h).collect();
    hosts
        .into_iter()
        .map(|vh| {
            let domains = vh.domains();
            let rs: Vec<&Value> = routes
                .iter()
                .filter(|(h, _)| vh.within(h))
                .map(|(_, r)| r)
                .collect();
            json!({"name": domains.join(","), "domains": domains, "routes": rs})
        })
        .collect()
}

/// The Envoy routes of one gateway route on a listener of `protocol` and
/// `port`, with its hostname criterion.
fn gateway_route(
    ctx: &Ctx<'_>,
    set: &mut ResourceSet,
    gr: &GatewayRouteSpec,
    protocol: &str,
    port: u32,
) -> Vec<(Host, Value)> {
    let (host, routes) = match protocol {
        "grpc" => match &gr.grpc_route {
            Some(g) if g.matcher.port.is_none_or(|p| p == port) => {
                (Host::of(g.matcher.hostname.as_ref()), grpc(ctx, set, g))
            }
            _ => return Vec::new(),
        },
        _ => {
            let h = if protocol == "http2" {
                gr.http2_route.as_ref()
            } else {
                gr.http_route.as_ref()
            };
            match h {
                Some(h) if h.matcher.port.is_none_or(|p| p == port) => (
                    Host::of(h.matcher.hostname.as_ref()),
                    http(ctx, set, h, protocol == "http2"),
                ),
                _ => return Vec::new(),
            }
        }
    };
    routes.into_iter().map(|r| (host.clone(), r)).collect()
}

/// Where a gateway route's target service sends traffic.
enum Provider<'a> {
    /// The virtual node's cluster.
    Node(String),
    /// The routes of a virtual router, on its listener `port`.
    Router(Vec<(String, RouteSpec)>, u32),
    /// Nothing (yet): no route.
    Missing(&'a str),
}

fn provider<'a>(ctx: &Ctx<'_>, set: &mut ResourceSet, action: &'a GatewayAction) -> Provider<'a> {
    let service = action.target.virtual_service.virtual_service_name.as_str();
    let Some(p) = ctx.service(service).and_then(|s| s.provider.as_ref()) else {
        return Provider::Missing(service);
    };
    if let Some(node) = &p.virtual_node {
        return match cluster::egress(ctx, set, &node.virtual_node_name, action.target.port) {
            Some(c) => Provider::Node(c),
            None => Provider::Missing(service),
        };
    }
    let Some(name) = p.virtual_router.as_ref().map(|r| &r.virtual_router_name) else {
        return Provider::Missing(service);
    };
    let listener = ctx.router(name).and_then(|r| match action.target.port {
        Some(port) => r.listeners.iter().find(|l| l.port_mapping.port == port),
        None => r.listeners.first(),
    });
    let Some(listener) = listener else {
        return Provider::Missing(service);
    };
    let mut rs = ctx.routes(name).to_vec();
    rs.sort_by(routes::route_order);
    Provider::Router(rs, listener.port_mapping.port)
}

/// Host rewrite: the target service's name unless DISABLED. The route also
/// names its target service (metadata) for the proxy's per-peer stats.
fn mark_target(action: &GatewayAction, route: &mut Value) {
    let service = &action.target.virtual_service.virtual_service_name;
    route["metadata"] = appmesh_metadata("virtual_service", service);
    let host = action
        .rewrite
        .as_ref()
        .and_then(|r| r.hostname.as_ref())
        .and_then(|h| h.default_target_hostname.as_deref());
    if host != Some("DISABLED") {
        route["route"]["host_rewrite_literal"] =
            json!(action.target.virtual_service.virtual_service_name);
    }
}

fn http(ctx: &Ctx<'_>, set: &mut ResourceSet, g: &GatewayHttpRoute, http2: bool) -> Vec<Value> {
    let base = routes::http_match(&g.matcher);
    let upstream = Upstream::of(g);
    let action = &g.action;
    let mut out = Vec::new();
    match provider(ctx, set, action) {
        Provider::Missing(service) => {
            tracing::debug!(service, "gateway route target has no provider yet");
        }
        Provider::Node(cluster) => {
            let retry = routes::default_retry_policy();
            let mut route =
                json!({"match": base, "route": {"cluster": cluster, "retry_policy": retry}});
            upstream.rewrite().apply(&mut route["route"]);
            mark_target(action, &mut route);
            out.push(route);
        }
        Provider::Router(rs, port) => {
            for (name, r) in &rs {
                let h = if http2 { &r.http2_route } else { &r.http_route };
                let Some(h) = h else { continue };
                if h.matcher.port.is_some_and(|p| p != port) {
                    continue;
                }
                let Some(narrowed) = upstream.narrow(&PathMatch::of(&h.matcher)) else {
                    tracing::debug!(
                        route = name,
                        "router route unreachable through the gateway route"
                    );
                    continue;
                };
                let mut matcher = base.clone();
                let rewrite = match narrowed {
                    Narrowed::Own => upstream.rewrite(),
                    Narrowed::To { path, rewrite } => {
                        path.set(&mut matcher);
                        rewrite
                    }
                };
                and_criteria(&mut matcher, &routes::http_match(&h.matcher));
                let Some(mut route) = routes::route(
                    ctx,
                    set,
                    matcher,
                    &h.action,
                    h.retry_policy.as_ref(),
                    h.timeout.as_ref(),
                ) else {
                    continue;
                };
                rewrite.apply(&mut route["route"]);
                mark_target(action, &mut route);
                out.push(route);
            }
        }
    }
    out
}

fn grpc(ctx: &Ctx<'_>, set: &mut ResourceSet, g: &GatewayGrpcRoute) -> Vec<Value> {
    let action = &g.action;
    let mut out = Vec::new();
    match provider(ctx, set, action) {
        Provider::Missing(service) => {
            tracing::debug!(service, "gateway route target has no provider yet");
        }
        Provider::Node(cluster) => {
            let retry = routes::default_retry_policy();
            let mut route = json!({"match": routes::grpc_match(&g.matcher),
                "route": {"cluster": cluster, "retry_policy": retry}});
            mark_target(action, &mut route);
            out.push(route);
        }
        Provider::Router(rs, port) => {
            for (_, r) in &rs {
                let Some(rg) = &r.grpc_route else { continue };
                if rg.matcher.port.is_some_and(|p| p != port) {
                    continue;
                }
                let (gs, rsvc) = (&g.matcher.service_name, &rg.matcher.service_name);
                if gs.is_some() && rsvc.is_some() && gs != rsvc {
                    continue;
                }
                let both = GrpcMatch {
                    service_name: gs.clone().or(rsvc.clone()),
                    method_name: rg.matcher.method_name.clone(),
                    metadata: [g.matcher.metadata.as_slice(), &rg.matcher.metadata].concat(),
                    port: None,
                    hostname: None,
                };
                let Some(mut route) = routes::route(
                    ctx,
                    set,
                    routes::grpc_match(&both),
                    &rg.action,
                    rg.retry_policy.as_ref(),
                    rg.timeout.as_ref(),
                ) else {
                    continue;
                };
                mark_target(action, &mut route);
                out.push(route);
            }
        }
    }
    out
}

/// Adds the router route's header, method and query criteria to the
/// gateway route's: a request must meet both.
fn and_criteria(matcher: &mut Value, inner: &Value) {
    for key in ["headers", "query_parameters"] {
        let Some(more) = inner.get(key).and_then(Value::as_array) else {
            continue;
        };
        match matcher.get_mut(key).and_then(Value::as_array_mut) {
            Some(list) => list.extend(more.iter().cloned()),
            None => matcher[key] = json!(more),
        }
    }
}
