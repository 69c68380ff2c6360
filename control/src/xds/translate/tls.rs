//! App Mesh TLS → Envoy transport sockets.
//!
//! Certificate and trust sources: `file` becomes file paths the proxy reads;
//! `sds` becomes an SDS reference over ADS. trellis is the SDS provider, so a
//! proxy's own `sds` certificate is always its mesh-issued SVID
//! ([`SVID_SECRET`]) and an `sds` trust is the mesh CA ([`BUNDLE_SECRET`]),
//! whatever secret name the spec gives (App Mesh specs name SPIRE secrets).

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::{cluster, Ctx, ResourceSet};
use crate::ca::{BUNDLE_SECRET, SVID_SECRET};
use crate::xds::spec::{ClientTls, ListenerTls, TlsCertificate, TlsValidation};

const TLS_SOCKET: &str = "envoy.transport_sockets.tls";

/// An SDS reference to a secret the control plane serves over ADS.
fn sds(name: &str) -> Value {
    json!({"name": name, "sds_config": {"ads": {}, "resource_api_version": "V3"}})
}

/// `common_tls_context` fields for a certificate source.
fn certificate(common: &mut Value, cert: &TlsCertificate) {
    if let Some(f) = &cert.file {
        common["tls_certificates"] = json!([{
            "certificate_chain": {"filename": f.certificate_chain},
            "private_key": {"filename": f.private_key},
        }]);
    } else if cert.sds.is_some() {
        common["tls_certificate_sds_secret_configs"] = json!([sds(SVID_SECRET)]);
    }
}

/// `common_tls_context` fields for a validation: the trust, and the SANs a
/// peer must present (`exact`) or whose URI SAN it must end with (`suffix`).
fn validation(common: &mut Value, v: &TlsValidation, exact: &[String], suffix: &[String]) {
    let sans: Vec<Value> = exact
        .iter()
        .flat_map(|s| {
            // App Mesh matched a name against any SAN; Envoy's typed
            // matchers need a type: a SPIFFE ID is a URI, anything else may
            // be a DNS name or a URI.
            let types: &[&str] = if s.starts_with("spiffe://") {
                &["URI"]
            } else {
                &["DNS", "URI"]
            };
            types
                .iter()
                .map(move |t| json!({"san_type": t, "matcher": {"exact": s}}))
        })
        .chain(
            suffix
                .iter()
                .map(|s| json!({"san_type": "URI", "matcher": {"suffix": s}})),
        )
        .collect();
    if let Some(f) = &v.trust.file {
        let mut ctx = json!({"trusted_ca": {"filename": f.certificate_chain}});
        if !sans.is_empty() {
            ctx["match_typed_subject_alt_names"] = json!(sans);
        }
        common["validation_context"] = ctx;
    } else if v.trust.sds.is_some() {
        if sans.is_empty() {
            common["validation_context_sds_secret_config"] = sds(BUNDLE_SECRET);
        } else {
            common["combined_validation_context"] = json!({
                "default_validation_context": {"match_typed_subject_alt_names": sans},
                "validation_context_sds_secret_config": sds(BUNDLE_SECRET),
            });
        }
    }
}

/// How an inbound chain is secured.
#[derive(Clone)]
pub(super) enum Inbound {
    Plain,
    /// TLS only (STRICT).
    Strict(Value),
    /// TLS and plain text side by side (PERMISSIVE), told apart by the TLS
    /// inspector.
    Permissive(Value),
}

/// Whom a listener with mesh-issued trust and no SAN list of its own
/// accepts.
pub(super) enum Callers<'a> {
    /// The virtual nodes and virtual gateways that send traffic to this
    /// virtual node.
    ClientsOf(&'a str),
    /// Any identity the trust validates: a virtual gateway's clients come
    /// from outside the mesh, so the mesh model does not name them.
    AnyTrusted,
}

/// A listener's `tls`, offering `alpn` when it is not empty.
pub(super) fn inbound(
    ctx: &Ctx<'_>,
    callers: Callers<'_>,
    tls: Option<&ListenerTls>,
    alpn: &[&str],
) -> Inbound {
    let Some(tls) = tls else {
        return Inbound::Plain;
    };
    let mut common = json!({});
    certificate(&mut common, &tls.certificate);
    if !alpn.is_empty() {
        common["alpn_protocols"] = json!(alpn);
    }
    let mut context = json!({
        "@type": xds_protos::type_url::DOWNSTREAM_TLS_CONTEXT,
    });
    if let Some(v) = &tls.validation {
        let exact = v
            .subject_alternative_names
            .as_ref()
            .map(|s| s.matcher.exact.clone())
            .unwrap_or_default();
        let suffix = match callers {
            Callers::ClientsOf(node) if exact.is_empty() && v.trust.sds.is_some() => {
                allowed_clients(ctx, node)
            }
            _ => Vec::new(),
        };
        validation(&mut common, v, &exact, &suffix);
        context["require_client_certificate"] = json!(true);
    }
    context["common_tls_context"] = common;
    let socket = json!({"name": TLS_SOCKET, "typed_config": context});
    match tls.mode.as_str() {
        "STRICT" => Inbound::Strict(socket),
        "PERMISSIVE" => Inbound::Permissive(socket),
        _ => Inbound::Plain,
    }
}

/// The SPIFFE ID path of every virtual node with a backend served by `node`
/// and of every virtual gateway with a gateway route to such a service, as a
/// URI suffix (`/mesh/M/virtualNode/N`, `/mesh/M/virtualGateway/G`): App
/// Mesh has no list of allowed callers, so these are derived from the
/// model. Only the mesh CA is trusted
/// here and it issues IDs in its own trust domain only, so the suffix names
/// exactly one identity without the translation knowing the trust domain.
/// An empty list would accept anyone, so a node nobody calls accepts a name
/// no SVID carries.
fn allowed_clients(ctx: &Ctx<'_>, node: &str) -> Vec<String> {
    let mut out: Vec<String> = ctx
        .nodes()
        .filter(|(_, spec)| {
            spec.backends
                .iter()
                .filter_map(|b| b.virtual_service.as_ref())
                .any(|b| served_by(ctx, &b.virtual_service_name, node))
        })
        .map(|(name, _)| format!("/mesh/{}/virtualNode/{name}", ctx.mesh))
        .collect();
    out.extend(
        ctx.all_gateway_routes()
            .filter(|(_, routes)| {
                routes
                    .iter()
                    .filter_map(|(_, r)| r.target_service())
                    .any(|service| served_by(ctx, service, node))
            })
            .map(|(gateway, _)| format!("/mesh/{}/virtualGateway/{gateway}", ctx.mesh)),
    );
    if out.is_empty() {
        out.push(format!("/mesh/{}/no-client-of/{node}", ctx.mesh));
    }
    out
}

/// Whether `service` sends traffic to `node`: its provider is the node, or
/// its router has a route with the node as a target.
fn served_by(ctx: &Ctx<'_>, service: &str, node: &str) -> bool {
    let Some(provider) = ctx.service(service).and_then(|s| s.provider.as_ref()) else {
        return false;
    };
    if let Some(n) = &provider.virtual_node {
        return n.virtual_node_name == node;
    }
    let Some(r) = &provider.virtual_router else {
        return false;
    };
    ctx.routes(&r.virtual_router_name).iter().any(|(_, route)| {
        let actions = [
            route.http_route.as_ref().map(|h| &h.action),
            route.http2_route.as_ref().map(|h| &h.action),
            route.grpc_route.as_ref().map(|g| &g.action),
            route.tcp_route.as_ref().map(|t| &t.action),
        ];
        actions
            .into_iter()
            .flatten()
            .any(|a| a.weighted_targets.iter().any(|t| t.virtual_node == node))
    })
}

/// A client policy's UpstreamTlsContext for a backend port, or `None` when
/// the policy does not apply there (`enforce: false`, or another port).
pub(super) fn upstream(policy: &ClientTls, port: u32) -> Option<Value> {
    if policy.enforce == Some(false) || !(policy.ports.is_empty() || policy.ports.contains(&port)) {
        return None;
    }
    let mut common = json!({});
    if let Some(cert) = &policy.certificate {
        certificate(&mut common, cert);
    }
    let exact = policy
        .validation
        .subject_alternative_names
        .as_ref()
        .map(|s| s.matcher.exact.clone())
        .unwrap_or_default();
    validation(&mut common, &policy.validation, &exact, &[]);
    Some(json!({
        "name": TLS_SOCKET,
        "typed_config": {
            "@type": xds_protos::type_url::UPSTREAM_TLS_CONTEXT,
            "common_tls_context": common,
        },
    }))
}

/// Puts a backend's client policy on the clusters its targets created. A
/// cluster shared with an earlier backend keeps that backend's policy, as one
/// cluster cannot carry two (the first backend wins, as for TCP ports).
pub(super) fn secure_new_clusters(
    set: &mut ResourceSet,
    before: &BTreeSet<String>,
    policy: Option<&ClientTls>,
) {
    let Some(policy) = policy else { return };
    for (name, cluster) in set.clusters.iter_mut() {
        if before.contains(name) {
            continue;
        }
        let socket = cluster::egress_port(name).and_then(|port| upstream(policy, port));
        if let Some(socket) = socket {
            cluster["transport_socket"] = socket;
        }
    }
}
