//! A virtual node's sidecar: inbound listener to the local app, outbound
//! listener to its backends.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::{
    appmesh_metadata, cluster, duration_ms, hcm, listener, original_dst, routes, tcp_proxy, tls,
    Chain, Ctx, Fallback, ResourceSet,
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
///
/// As App Mesh's Envoy did, the inbound listener on the ingress port picks
/// the chain by the port the client dialled (`original_dst`, behind
/// interception), and takes the first listener's chain for connections
/// made to the ingress port itself. A listener mapped to a port of its own
/// ([`super::Ports::listener_ingress`]) is also served there, alone: the
/// way to reach it without interception.
fn inbound(ctx: &Ctx<'_>, set: &mut ResourceSet, name: &str, spec: &VirtualNodeSpec) {
    if spec.listeners.is_empty() {
        return;
    }
    let ports = ctx.ports;
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
        let chain = Chain {
            tls: tls::inbound(ctx, tls::Callers::ClientsOf(name), l.tls.as_ref(), &[]),
            name: format!("ingress_{}_{}", pm.protocol, pm.port),
            destination_port: Some(pm.port),
            filter,
        };
        if let Some(own) = ports
            .listener_ingress
            .get(&pm.port)
            .filter(|p| **p != ports.ingress)
        {
            let lname = format!("lds_ingress_{}_{own}", ports.listener_address);
            let alone = listener(
                &lname,
                &ports.listener_address,
                *own,
                "INBOUND",
                vec![chain.clone()],
                Fallback::FirstChain,
            );
            set.listeners.insert(lname, alone);
        }
        chains.push(chain);
    }
    let lname = format!("lds_ingress_{}_{}", ports.listener_address, ports.ingress);
    let mut ingress = listener(
        &lname,
        &ports.listener_address,
        ports.ingress,
        "INBOUND",
        chains,
        Fallback::FirstChain,
    );
    original_dst(&mut ingress);
    set.listeners.insert(lname, ingress);
}

/// Virtual hosts for every HTTP-family backend port, TCP chains matched by
/// the backend's port. Backends that do not exist yet are skipped, as in
/// App Mesh: the node may be created before the services it calls.
fn outbound(ctx: &Ctx<'_>, set: &mut ResourceSet, spec: &VirtualNodeSpec) {
    let ports = ctx.ports;
    let rc = format!("rds_egress_http_{}", ports.egress);
    let mut vhosts: Vec<Value> = Vec::new();
    let mut chains: Vec<Chain> = Vec::new();
    let mut http_ports = BTreeSet::new();
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
                    http_ports.insert(target.port);
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
    let allow_all = ctx
        .mesh_spec
        .egress_filter
        .as_ref()
        .and_then(|f| f.kind.as_deref())
        == Some("ALLOW_ALL");
    let passthrough = allow_all.then(|| cluster::passthrough(set, ctx.mesh));
    if let Some(cluster) = &passthrough {
        // After every backend's hosts: a destination the mesh does not know.
        // `https_proxy=` clients CONNECT to it: the tunnel is terminated
        // here and the bytes go as they are to the named host.
        vhosts.push(json!({
            "name": "allow_all",
            "domains": ["*"],
            "routes": [
                {"match": {"connect_matcher": {}}, "route": {
                    "cluster": cluster,
                    "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}],
                }},
                {"match": {"prefix": "/"}, "route": {"cluster": cluster}},
            ],
        }));
    }
    if !vhosts.is_empty() {
        set.routes
            .insert(rc.clone(), json!({"name": rc, "virtual_hosts": vhosts}));
        let mut hcm = hcm(
            &format!("egress_http_{}", ports.egress),
            &rc,
            spec.logging.as_ref(),
        );
        if passthrough.is_some() {
            // CONNECT only to destinations outside the mesh: a tunnel would
            // carry a backend's traffic past its TLS policy and routes.
            if let Some(upgrades) = hcm["typed_config"]["upgrade_configs"].as_array_mut() {
                upgrades.push(json!({"upgrade_type": "CONNECT"}));
            }
        }
        let http_chains = match &passthrough {
            // DROP_ALL: HTTP on any port no TCP backend claims.
            None => vec![(None, "egress_http".to_string())],
            // ALLOW_ALL: HTTP only on the HTTP backends' ports and on the
            // egress port itself (clients that call the proxy directly);
            // any other port passes through as TCP.
            Some(_) => http_ports
                .iter()
                .chain(std::iter::once(&ports.egress))
                .filter(|p| !chains.iter().any(|c| c.destination_port == Some(**p)))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .map(|p| (Some(*p), format!("egress_http_{p}")))
                .collect(),
        };
        for (i, (port, name)) in http_chains.into_iter().enumerate() {
            chains.insert(
                i,
                Chain {
                    tls: tls::Inbound::Plain,
                    name,
                    destination_port: port,
                    filter: hcm.clone(),
                },
            );
        }
    }
    if chains.is_empty() {
        return;
    }
    let fallback = match &passthrough {
        Some(cluster) => Fallback::Chain(json!({
            "name": "egress_passthrough",
            "filters": [tcp_proxy(
                "egress_passthrough",
                &[(cluster.clone(), 1)],
                None,
                spec.logging.as_ref(),
            )],
        })),
        None => Fallback::FirstChain,
    };
    let lname = format!("lds_egress_{}_{}", ports.listener_address, ports.egress);
    let mut egress = listener(
        &lname,
        &ports.listener_address,
        ports.egress,
        "OUTBOUND",
        chains,
        fallback,
    );
    original_dst(&mut egress);
    set.listeners.insert(lname, egress);
}
