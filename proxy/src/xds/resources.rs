//! The xDS resources a proxy holds, by type and name, each compiled when it
//! arrives. Each resource of an update is validated on its own, as Envoy
//! does: the valid ones are kept, a rejected one keeps its last good version
//! (or stays absent), and the response's version is taken only if nothing
//! in it was rejected. A resource that arrives
//! with the very bytes of the one held under its name keeps its compiled
//! form (Envoy skips such resources too), so a state-of-the-world response
//! of 1,000 clusters where one changed compiles one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use xds_protos::envoy::config::cluster::v3::Cluster;
use xds_protos::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_protos::envoy::config::listener::v3::Listener;
use xds_protos::type_url;

use crate::config::cluster::{endpoints, ClusterConfig, Discovery, EndpointConfig};
use crate::config::hcm::{Rds, RouteSource};
use crate::config::listener::{ListenerConfig, Terminal};
use crate::router::{EncodedRouteConfig, RouteTable};
use crate::snapshot::DynamicResource;
use crate::tls::secrets::{self, SecretValue};
use crate::wire;

/// The field number of the name of every resource type held here
/// (`cluster_name` of a ClusterLoadAssignment).
const NAME_FIELD: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Cluster,
    Endpoint,
    Listener,
    Route,
    Secret,
}

impl Kind {
    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Cluster => type_url::CLUSTER,
            Kind::Endpoint => type_url::CLUSTER_LOAD_ASSIGNMENT,
            Kind::Listener => type_url::LISTENER,
            Kind::Route => type_url::ROUTE_CONFIGURATION,
            Kind::Secret => type_url::SECRET,
        }
    }

    pub fn from_type_url(url: &str) -> Option<Kind> {
        [
            Kind::Cluster,
            Kind::Endpoint,
            Kind::Listener,
            Kind::Route,
            Kind::Secret,
        ]
        .into_iter()
        .find(|k| k.type_url() == url)
    }

    /// Listeners and clusters are wildcard subscriptions; routes and
    /// endpoints are asked for by name.
    pub fn is_wildcard(self) -> bool {
        matches!(self, Kind::Cluster | Kind::Listener)
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Cluster => "Cluster",
            Kind::Endpoint => "ClusterLoadAssignment",
            Kind::Listener => "Listener",
            Kind::Route => "RouteConfiguration",
            Kind::Secret => "Secret",
        }
    }
}

/// One held resource: its compiled form, and the name, version and
/// encoding `/config_dump` shows (the encoding also recognises the resource
/// when it is sent again unchanged).
#[derive(Debug)]
pub struct Held<T> {
    pub value: Arc<T>,
    pub dump: Arc<DynamicResource>,
}

impl<T> Held<T> {
    pub fn version(&self) -> &str {
        &self.dump.version
    }
}

impl<T> Clone for Held<T> {
    fn clone(&self) -> Self {
        Held {
            value: self.value.clone(),
            dump: self.dump.clone(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Resources {
    pub clusters: BTreeMap<String, Held<ClusterConfig>>,
    pub endpoints: BTreeMap<String, Held<Vec<EndpointConfig>>>,
    pub listeners: BTreeMap<String, Held<ListenerConfig>>,
    pub routes: BTreeMap<String, Held<RouteTable>>,
    pub secrets: BTreeMap<String, Held<SecretValue>>,
    /// The last accepted `version_info` per type (state of the world).
    pub versions: BTreeMap<Kind, String>,
    /// Counts the changes to each type's held set, so that what is built
    /// from a set can be kept while it stays the same.
    generations: BTreeMap<Kind, u64>,
}

/// One response's worth of changes, in either protocol variant.
pub struct Update {
    pub kind: Kind,
    pub version_info: String,
    /// `(version, resource)`; a delta resource carries its own version.
    pub resources: Vec<(String, prost_types::Any)>,
    pub removed: Vec<String>,
    /// State of the world for a wildcard type: whatever is absent is gone.
    pub replace_all: bool,
}

/// What became of an update: its rejection, if any part was refused, and
/// each named resource it carried with whether it was taken.
pub struct Applied {
    pub result: Result<(), String>,
    pub touched: Vec<(String, bool)>,
}

impl Resources {
    pub fn apply(&mut self, u: Update) -> Applied {
        let kind = u.kind;
        let mut errors = Vec::new();
        let mut touched = Vec::new();
        macro_rules! compile_all {
            ($map:ident, $decode:expr) => {{
                let mut next = if u.replace_all {
                    BTreeMap::new()
                } else {
                    self.$map.clone()
                };
                for name in &u.removed {
                    next.remove(name);
                }
                for (version, any) in u.resources {
                    if any.type_url != kind.type_url() {
                        errors.push(format!(
                            "resource of type {} in a {} response",
                            any.type_url,
                            kind.label()
                        ));
                        continue;
                    }
                    let raw = Bytes::from(any.value);
                    let unchanged = wire::string_field(&raw, NAME_FIELD)
                        .and_then(|name| self.$map.get_key_value(name))
                        .filter(|(_, held)| held.dump.raw == raw)
                        .map(|(name, held)| (name.clone(), held.value.clone()));
                    let decoded = match unchanged {
                        Some(kept) => Ok(kept),
                        None => $decode(&raw).map(|(name, value)| (name, Arc::new(value))),
                    };
                    match decoded {
                        Ok((name, value)) => {
                            let version = if version.is_empty() {
                                u.version_info.clone()
                            } else {
                                version
                            };
                            let dump = Arc::new(DynamicResource {
                                type_url: kind.type_url(),
                                name: name.clone(),
                                version,
                                raw,
                            });
                            touched.push((name.clone(), true));
                            next.insert(name, Held { value, dump });
                        }
                        Err((name, e)) => {
                            // The rejected resource keeps its last good
                            // version, even in a state-of-the-world update.
                            if let Some(name) = name {
                                if let Some(old) = self.$map.get(&name) {
                                    next.insert(name.clone(), old.clone());
                                }
                                touched.push((name, false));
                            }
                            errors.push(e)
                        }
                    }
                }
                // As Envoy does, the valid resources of a rejected response
                // are kept: a delta server counts them as delivered.
                self.$map = next;
            }};
        }
        match kind {
            Kind::Cluster => compile_all!(clusters, decode_cluster),
            Kind::Endpoint => compile_all!(endpoints, decode_endpoints),
            Kind::Listener => compile_all!(listeners, decode_listener),
            Kind::Route => {
                let held = &self.routes;
                compile_all!(routes, |raw: &Bytes| decode_route(raw, held))
            }
            Kind::Secret => compile_all!(secrets, secrets::decode),
        }
        if kind == Kind::Secret {
            // Kept: the next handshake of every context naming one uses it.
            for (name, held) in &self.secrets {
                secrets::publish_ads(name, &held.value);
            }
        }
        *self.generations.entry(kind).or_default() += 1;
        let result = if errors.is_empty() {
            self.versions.insert(kind, u.version_info);
            Ok(())
        } else {
            Err(errors.join("; "))
        };
        Applied { result, touched }
    }

    /// The held clusters whose endpoints come under EDS name `service`.
    pub fn clusters_of(&self, service: &str) -> Vec<&str> {
        self.clusters
            .iter()
            .filter(
                |(_, c)| matches!(&c.value.discovery, Discovery::Eds(e) if e.service == service),
            )
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// Changes as soon as the held set of `kind` may have.
    pub fn generation(&self, kind: Kind) -> u64 {
        self.generations.get(&kind).copied().unwrap_or_default()
    }

    /// Names this proxy must ask for: EDS service names of its clusters.
    pub fn eds_names(&self) -> BTreeSet<String> {
        self.clusters
            .values()
            .filter_map(|c| match &c.value.discovery {
                Discovery::Eds(eds) => Some(eds.service.clone()),
                _ => None,
            })
            .collect()
    }

    /// Route configuration names its listeners use over RDS.
    pub fn rds_names(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .flat_map(|l| rds_names(&l.value))
            .collect()
    }

    /// Secrets the held listeners and clusters expect over ADS.
    pub fn secret_names(&self) -> BTreeSet<String> {
        let listeners = self.listeners.values().flat_map(|l| {
            l.value
                .filter_chains
                .iter()
                .chain(l.value.default_chain.iter())
                .filter_map(|c| c.tls.as_ref())
                .flat_map(|t| t.ads_secret_names().to_vec())
                .collect::<Vec<_>>()
        });
        let clusters = self
            .clusters
            .values()
            .filter_map(|c| c.value.tls.as_ref())
            .flat_map(|t| t.ads_secret_names().to_vec());
        listeners.chain(clusters).collect()
    }

    /// `name → version` of what is held, for a delta stream's resubscription.
    pub fn held_versions(&self, kind: Kind) -> std::collections::HashMap<String, String> {
        fn versions<T>(m: &BTreeMap<String, Held<T>>) -> std::collections::HashMap<String, String> {
            m.iter()
                .map(|(k, v)| (k.clone(), v.version().to_owned()))
                .collect()
        }
        match kind {
            Kind::Cluster => versions(&self.clusters),
            Kind::Endpoint => versions(&self.endpoints),
            Kind::Listener => versions(&self.listeners),
            Kind::Route => versions(&self.routes),
            Kind::Secret => versions(&self.secrets),
        }
    }

    /// Drops named resources nobody subscribes to any more.
    pub fn retain(&mut self, kind: Kind, keep: &BTreeSet<String>) {
        *self.generations.entry(kind).or_default() += 1;
        match kind {
            Kind::Endpoint => self.endpoints.retain(|k, _| keep.contains(k)),
            Kind::Route => self.routes.retain(|k, _| keep.contains(k)),
            Kind::Secret => self.secrets.retain(|k, _| keep.contains(k)),
            Kind::Cluster | Kind::Listener => {}
        }
    }
}

pub fn rds_names(l: &ListenerConfig) -> Vec<String> {
    rds_of(l).map(|r| r.name.to_string()).collect()
}

/// The route configurations a listener takes over RDS.
pub fn rds_of(l: &ListenerConfig) -> impl Iterator<Item = &Rds> {
    rds_by_prefix(l).map(|(_, rds)| rds)
}

/// The route configurations a listener takes over RDS, with the stat
/// prefix of the connection manager that takes each.
pub fn rds_by_prefix(l: &ListenerConfig) -> impl Iterator<Item = (&Arc<str>, &Rds)> {
    l.filter_chains
        .iter()
        .chain(l.default_chain.iter())
        .filter_map(|c| match &c.terminal {
            Terminal::Http(h) => match &h.routes {
                RouteSource::Rds(rds) => Some((&h.stat_prefix, rds)),
                RouteSource::Static(_) => None,
            },
            Terminal::Tcp(_) => None,
        })
}

/// A decode failure, with the resource's name when it could be read.
type Rejected = (Option<String>, String);

fn decode_cluster(raw: &Bytes) -> Result<(String, ClusterConfig), Rejected> {
    let c = Cluster::decode(raw.as_ref())
        .map_err(|e| (None, format!("Cluster: cannot decode: {e}")))?;
    match ClusterConfig::compile(&c) {
        Ok(compiled) => Ok((c.name, compiled)),
        Err(e) => Err((Some(c.name.clone()), format!("Cluster '{}': {e}", c.name))),
    }
}

fn decode_endpoints(raw: &Bytes) -> Result<(String, Vec<EndpointConfig>), Rejected> {
    let la = ClusterLoadAssignment::decode(raw.as_ref())
        .map_err(|e| (None, format!("ClusterLoadAssignment: cannot decode: {e}")))?;
    let name = la.cluster_name.clone();
    let reject = |e: String| {
        (
            Some(name.clone()),
            format!("ClusterLoadAssignment '{name}': {e}"),
        )
    };
    let eps = endpoints(&la).map_err(|e| reject(e.to_string()))?;
    // `endpoints` yields one entry per lb_endpoint, in order.
    let paths = la.endpoints.iter().enumerate().flat_map(|(li, l)| {
        (0..l.lb_endpoints.len()).map(move |ei| {
            format!("endpoints[{li}].lb_endpoints[{ei}].endpoint.address.socket_address.address")
        })
    });
    if let Some((bad, path)) = eps
        .iter()
        .zip(paths)
        .find(|(e, _)| e.address.ip().is_none())
    {
        return Err(reject(format!(
            "{path}: '{}' is not an IP address",
            bad.address.host
        )));
    }
    Ok((la.cluster_name, eps))
}

fn decode_listener(raw: &Bytes) -> Result<(String, ListenerConfig), Rejected> {
    let l = Listener::decode(raw.as_ref())
        .map_err(|e| (None, format!("Listener: cannot decode: {e}")))?;
    match ListenerConfig::compile(&l) {
        Ok(compiled) => Ok((l.name, compiled)),
        Err(e) => Err((Some(l.name.clone()), format!("Listener '{}': {e}", l.name))),
    }
}

/// Compiles a route configuration, sharing with the version held under its
/// name every virtual host and route whose bytes did not change.
fn decode_route(
    raw: &Bytes,
    held: &BTreeMap<String, Held<RouteTable>>,
) -> Result<(String, RouteTable), Rejected> {
    let rc = EncodedRouteConfig::decode(raw.clone())
        .map_err(|e| (None, format!("RouteConfiguration: cannot decode: {e}")))?;
    let previous = held.get(rc.name()).map(|h| h.value.as_ref());
    match RouteTable::compile_encoded(&rc, previous) {
        Ok(table) => Ok((rc.name().to_owned(), table)),
        Err(e) => Err((
            Some(rc.name().to_owned()),
            format!("RouteConfiguration '{}': {e}", rc.name()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_protos::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
    use xds_protos::envoy::config::route::v3::{
        route, route_action, route_match::PathSpecifier, Route, RouteAction, RouteConfiguration,
        RouteMatch, VirtualHost,
    };

    fn any<M: Message>(kind: Kind, m: &M) -> prost_types::Any {
        prost_types::Any {
            type_url: kind.type_url().into(),
            value: m.encode_to_vec(),
        }
    }

    fn cluster(name: &str, timeout_s: i64) -> prost_types::Any {
        any(
            Kind::Cluster,
            &Cluster {
                name: name.into(),
                cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
                connect_timeout: Some(prost_types::Duration {
                    seconds: timeout_s,
                    nanos: 0,
                }),
                ..Default::default()
            },
        )
    }

    fn routes(clusters: &[&str]) -> prost_types::Any {
        let vhost = |i: usize, c: &str| VirtualHost {
            name: format!("v{i}"),
            domains: vec![format!("h{i}")],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(c.into())),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        };
        any(
            Kind::Route,
            &RouteConfiguration {
                name: "rc".into(),
                virtual_hosts: clusters
                    .iter()
                    .enumerate()
                    .map(|(i, c)| vhost(i, c))
                    .collect(),
                ..Default::default()
            },
        )
    }

    fn sotw(kind: Kind, version: &str, resources: Vec<prost_types::Any>) -> Update {
        Update {
            kind,
            version_info: version.into(),
            resources: resources.into_iter().map(|a| (String::new(), a)).collect(),
            removed: Vec::new(),
            replace_all: kind.is_wildcard(),
        }
    }

    #[test]
    fn resources_sent_again_unchanged_keep_their_compiled_form() {
        let mut res = Resources::default();
        let v1 = vec![cluster("a", 1), cluster("b", 1), cluster("c", 1)];
        res.apply(sotw(Kind::Cluster, "1", v1)).result.unwrap();
        let before = res.clusters.clone();
        let v2 = vec![cluster("a", 1), cluster("b", 2), cluster("c", 1)];
        res.apply(sotw(Kind::Cluster, "2", v2)).result.unwrap();

        let kept = |n: &str| Arc::ptr_eq(&before[n].value, &res.clusters[n].value);
        assert!(kept("a") && kept("c"));
        assert!(!kept("b"));
        assert_eq!(
            res.clusters["b"].value.connect_timeout,
            std::time::Duration::from_secs(2)
        );
        assert!(res.clusters.values().all(|h| h.version() == "2"));
    }

    #[test]
    fn a_changed_route_configuration_shares_its_unchanged_virtual_hosts() {
        let mut res = Resources::default();
        res.apply(sotw(Kind::Route, "1", vec![routes(&["a", "b"])]))
            .result
            .unwrap();
        let before = res.routes["rc"].value.clone();
        res.apply(sotw(Kind::Route, "2", vec![routes(&["a", "moved"])]))
            .result
            .unwrap();
        let after = &res.routes["rc"].value;
        let (old, new) = (before.virtual_hosts(), after.virtual_hosts());
        assert!(Arc::ptr_eq(&old[0], &new[0]));
        assert!(!Arc::ptr_eq(&old[1], &new[1]));
        let req = http::Request::builder().uri("/").body(()).unwrap();
        let m = after
            .find_with_random("h1", &req.into_parts().0, 0)
            .unwrap();
        let crate::router::Action::Forward(f) = &m.route.action else {
            panic!("forward");
        };
        assert!(matches!(&f.cluster, crate::router::ClusterSpecifier::Cluster(c) if c == "moved"));
    }
}
