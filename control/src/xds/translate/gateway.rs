//! A virtual gateway: a listener per gateway listener port, routes from its
//! gateway routes to the target virtual services.
//!
//! Envoy cannot chain a gateway route into a virtual router's route table,
//! so a target served by a router gets that router's first route of the same
//! protocol that matches every request (its weighted targets); a target served
//! by a virtual node gets that node's cluster.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{appmesh_metadata, cluster, hcm, listener, routes, tls, Chain, Ctx, ResourceSet};
use crate::xds::spec::{
    GatewayAction, GatewayRouteSpec, HostnameMatch, RouteSpec, VirtualGatewaySpec,
};

pub(super) fn translate(ctx: &Ctx<'_>, name: &str, spec: &VirtualGatewaySpec) -> ResourceSet {
    let mut set = ResourceSet::default();
    let mut grs: Vec<(String, GatewayRouteSpec)> = ctx.gateway_routes(name).to_vec();
    grs.sort_by(|a, b| {
        (a.1.priority.unwrap_or(u32::MAX), &a.0).cmp(&(b.1.priority.unwrap_or(u32::MAX), &b.0))
    });
    for l in &spec.listeners {
        let (port, protocol) = (l.port_mapping.port, l.port_mapping.protocol.as_str());
        // Virtual hosts by hostname match, the catch-all last.
        let mut vhosts: BTreeMap<Vec<String>, Vec<Value>> = BTreeMap::new();
        for (_, gr) in &grs {
            let built = match protocol {
                "grpc" => gr.grpc_route.as_ref().map(|g| {
                    (
                        routes::grpc_match(&g.matcher),
                        g.matcher.port,
                        g.matcher.hostname.as_ref(),
                        &g.action,
                        false,
                    )
                }),
                _ => {
                    let h = if protocol == "http2" {
                        gr.http2_route.as_ref()
                    } else {
                        gr.http_route.as_ref()
                    };
                    h.map(|h| {
                        (
                            routes::http_match(&h.matcher),
                            h.matcher.port,
                            h.matcher.hostname.as_ref(),
                            &h.action,
                            h.matcher.prefix.is_some(),
                        )
                    })
                }
            };
            let Some((matcher, match_port, hostname, action, by_prefix)) = built else {
                continue;
            };
            if match_port.is_some_and(|p| p != port) {
                continue;
            }
            let Some(route) = gateway_route(ctx, &mut set, matcher, action, by_prefix) else {
                continue;
            };
            vhosts.entry(domains(hostname)).or_default().push(route);
        }
        let mut vh: Vec<Value> = Vec::new();
        let mut catch_all = None;
        for (domains, routes) in vhosts {
            let v = json!({"name": domains.join(","), "domains": domains, "routes": routes});
            if domains == ["*"] {
                catch_all = Some(v);
            } else {
                vh.push(v);
            }
        }
        vh.extend(catch_all);
        let rc = format!("rds_ingress_{protocol}_{port}");
        set.routes
            .insert(rc.clone(), json!({"name": rc, "virtual_hosts": vh}));
        let lname = format!("lds_ingress_{}_{port}", ctx.ports.listener_address);
        set.listeners.insert(
            lname.clone(),
            listener(
                &lname,
                &ctx.ports.listener_address,
                port,
                "INBOUND",
                vec![Chain {
                    tls: tls::Inbound::Plain,
                    name: format!("gateway_{protocol}_{port}"),
                    destination_port: None,
                    filter: hcm(
                        &format!("ingress_{protocol}_{port}"),
                        &rc,
                        spec.logging.as_ref(),
                    ),
                }],
            ),
        );
    }
    set
}

fn domains(h: Option<&HostnameMatch>) -> Vec<String> {
    match h {
        Some(HostnameMatch { exact: Some(e), .. }) => vec![e.clone(), format!("{e}:*")],
        Some(HostnameMatch {
            suffix: Some(s), ..
        }) => vec![format!("*{s}")],
        _ => vec!["*".into()],
    }
}

/// App Mesh rewrites: a matched prefix becomes `/` unless the default prefix
/// rewrite is DISABLED, or becomes `value`; an exact path replaces the path;
/// the Host becomes the target service's name unless that is DISABLED.
fn gateway_route(
    ctx: &Ctx<'_>,
    set: &mut ResourceSet,
    matcher: Value,
    action: &GatewayAction,
    by_prefix: bool,
) -> Option<Value> {
    let service = &action.target.virtual_service.virtual_service_name;
    let clusters = service_clusters(ctx, set, service, action.target.port)?;
    let mut a = routes::cluster_action(&clusters)?;
    let rewrite = action.rewrite.as_ref();
    if let Some(exact) = rewrite
        .and_then(|r| r.path.as_ref())
        .and_then(|p| p.exact.as_ref())
    {
        a["regex_rewrite"] = json!({"pattern": {"regex": "^.*$"}, "substitution": exact});
    } else if by_prefix {
        let prefix = rewrite.and_then(|r| r.prefix.as_ref());
        match (
            prefix.and_then(|p| p.value.as_ref()),
            prefix.and_then(|p| p.default_prefix.as_deref()),
        ) {
            (Some(v), _) => a["prefix_rewrite"] = json!(v),
            (None, Some("DISABLED")) => {}
            (None, _) => a["prefix_rewrite"] = json!("/"),
        }
    }
    let host = rewrite
        .and_then(|r| r.hostname.as_ref())
        .and_then(|h| h.default_target_hostname.as_deref());
    if host != Some("DISABLED") {
        a["host_rewrite_literal"] = json!(service);
    }
    Some(json!({
        "match": matcher,
        "route": a,
        "metadata": appmesh_metadata("virtual_service", service),
    }))
}

fn service_clusters(
    ctx: &Ctx<'_>,
    set: &mut ResourceSet,
    service: &str,
    port: Option<u32>,
) -> Option<Vec<(String, u32)>> {
    let provider = ctx.service(service)?.provider.as_ref()?;
    if let Some(node) = &provider.virtual_node {
        return Some(vec![(
            cluster::egress(ctx, set, &node.virtual_node_name, port)?,
            1,
        )]);
    }
    let router_name = &provider.virtual_router.as_ref()?.virtual_router_name;
    let mut rs: Vec<(String, RouteSpec)> = ctx.routes(router_name).to_vec();
    rs.sort_by(|a, b| {
        (a.1.priority.unwrap_or(u32::MAX), &a.0).cmp(&(b.1.priority.unwrap_or(u32::MAX), &b.0))
    });
    rs.iter().find_map(|(_, r)| {
        let action = r
            .http_route
            .as_ref()
            .or(r.http2_route.as_ref())
            .map(|h| &h.action)
            .or(r.grpc_route.as_ref().map(|g| &g.action))?;
        let clusters = routes::weighted(ctx, set, action);
        (!clusters.is_empty()).then_some(clusters)
    })
}
