//! A virtual node's sidecar: inbound listener to the local app, outbound
//! listener to its backends.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::{
    appmesh_metadata, cluster, duration_ms, hcm, listener, routes, tcp_proxy, tls, Chain, Ctx,
    ResourceSet,
};
use crate::xds::spec::{ClientTls, VirtualNodeSpec};

pub(super) fn translate(ctx: &Ctx<'_>, name: &str, spec: &VirtualNodeSpec) -> ResourceSet {
    let mut set = ResourceSet::default();
    inbound(ctx, &mut set, name, spec);
    outbound(ctx, &mut set, spec);
    set
}

/// One chain per App Mesh listener; HTTP ones take routes from RDS
/// `rds_ingress_<protocol>_<port>`, whose single route carries the
/// listener's timeouts to the local cluster.
fn inbound(ctx: &Ctx<'_>, set: &mut ResourceSet, name: &str, spec: &VirtualNodeSpec) {
    if spec.listeners.is_empty() {
        return;
    }
    let mut chains = Vec::new();
    for l in &spec.listeners {
        let pm = &l.port_mapping;
        let cluster = cluster::ingress(set, ctx.mesh, name, l);
        let timeout = l
            .timeout
            .as_ref()
            .and_then(|t| t.for_protocol(&pm.protocol));
        let idle = timeout.and_then(|t| t.idle).and_then(|d| d.millis());
        let filter = if pm.protocol == "tcp" {
            tcp_proxy(
                &cluster,
                &[(cluster.clone(), 1)],
                idle,
                spec.logging.as_ref(),
            )
        } else {
            let rc = format!("rds_ingress_{}_{}", pm.protocol, pm.port);
            let mut action = json!({"cluster": cluster});
            if let Some(ms) = timeout.and_then(|t| t.per_request).and_then(|d| d.millis()) {
                action["timeout"] = duration_ms(ms);
            }
            if let Some(ms) = idle {
                action["idle_timeout"] = duration_ms(ms);
            }
            set.routes.insert(
                rc.clone(),
                json!({
                    "name": rc,
                    "virtual_hosts": [{
                        "name": format!("ingress_{}", pm.port),
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": action}],
                    }],
                }),
            );
            hcm(
                &format!("ingress_{}_{}", pm.protocol, pm.port),
                &rc,
                spec.logging.as_ref(),
            )
        };
        chains.push(Chain {
            tls: tls::inbound(ctx, tls::Callers::ClientsOf(name), l.tls.as_ref(), &[]),
            name: format!("ingress_{}_{}", pm.protocol, pm.port),
            destination_port: Some(pm.port),
            filter,
        });
    }
    let ports = ctx.ports;
    let lname = format!("lds_ingress_{}_{}", ports.listener_address, ports.ingress);
    set.listeners.insert(
        lname.clone(),
        listener(
            &lname,
            &ports.listener_address,
            ports.ingress,
            "INBOUND",
            chains,
        ),
    );
}

/// Virtual hosts for every HTTP-family backend port, TCP chains matched by
/// the backend's port. Backends that do not exist yet are skipped, as in
/// App Mesh: the node may be created before the services it calls.
fn outbound(ctx: &Ctx<'_>, set: &mut ResourceSet, spec: &VirtualNodeSpec) {
    let ports = ctx.ports;
    let rc = format!("rds_egress_http_{}", ports.egress);
    let mut vhosts: Vec<Value> = Vec::new();
    let mut chains: Vec<Chain> = Vec::new();
    let defaults = spec
        .backend_defaults
        .as_ref()
        .and_then(|d| d.client_policy.as_ref())
        .and_then(|p| p.tls.as_ref());
    let mut seen = BTreeSet::new();
    let backends: Vec<(String, Option<ClientTls>)> = spec
        .backends
        .iter()
        .filter_map(|b| b.virtual_service.as_ref())
        .filter(|b| seen.insert(b.virtual_service_name.clone()))
        .map(|b| {
            let own = b.client_policy.as_ref().and_then(|p| p.tls.as_ref());
            (b.virtual_service_name.clone(), own.or(defaults).cloned())
        })
        .collect();
    for (service, policy) in backends {
        let before: BTreeSet<String> = set.clusters.keys().cloned().collect();
        let targets = routes::service_targets(ctx, set, &service);
        tls::secure_new_clusters(set, &before, policy.as_ref());
        for target in targets {
            match target.tcp {
                // One chain per port: Envoy refuses two chains that match
                // alike, so the first backend on a TCP port takes it.
                Some(_)
                    if chains
                        .iter()
                        .any(|c| c.destination_port == Some(target.port)) =>
                {
                    tracing::warn!(
                        service,
                        port = target.port,
                        "a TCP port of two backends; the first one wins"
                    );
                }
                Some(tcp) => chains.push(Chain {
                    tls: tls::Inbound::Plain,
                    name: format!("egress_tcp_{}_{}", service, target.port),
                    destination_port: Some(target.port),
                    filter: tcp_proxy(
                        &format!("egress_tcp_{}", target.port),
                        &tcp.clusters,
                        tcp.idle_ms,
                        spec.logging.as_ref(),
                    ),
                }),
                None => {
                    let mut domains = vec![format!("{service}:{}", target.port)];
                    if target.first {
                        domains.insert(0, service.clone());
                    }
                    vhosts.push(json!({
                        "name": format!("{service}:{}", target.port),
                        "domains": domains,
                        "routes": target.routes,
                        "metadata": appmesh_metadata("virtual_service", &service),
                    }));
                }
            }
        }
    }
    if !vhosts.is_empty() {
        set.routes
            .insert(rc.clone(), json!({"name": rc, "virtual_hosts": vhosts}));
        chains.insert(
            0,
            Chain {
                tls: tls::Inbound::Plain,
                name: "egress_http".into(),
                destination_port: None,
                filter: hcm(
                    &format!("egress_http_{}", ports.egress),
                    &rc,
                    spec.logging.as_ref(),
                ),
            },
        );
    }
    if chains.is_empty() {
        return;
    }
    let lname = format!("lds_egress_{}_{}", ports.listener_address, ports.egress);
    set.listeners.insert(
        lname.clone(),
        listener(
            &lname,
            &ports.listener_address,
            ports.egress,
            "OUTBOUND",
            chains,
        ),
    );
}
