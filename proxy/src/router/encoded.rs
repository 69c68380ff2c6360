//! Incremental RDS compilation. A RouteConfiguration arrives whole on every
//! change, yet usually differs from the version it replaces in a few virtual
//! hosts or routes. Those whose encoding is byte-for-byte the previous one's
//! are shared (`Arc`) with the previous table instead of being decoded and
//! compiled again, so one changed route in 10,000 costs one route's work
//! plus a comparison of bytes. Compilation is a pure function of the bytes
//! (and of what else is compared here), so sharing never changes routing.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use prost::{DecodeError, Message};
use xds_protos::envoy::config::route::v3::{
    Route as RouteProto, RouteConfiguration, VirtualHost as VirtualHostProto,
};

use super::{compile_route, compile_virtual_host, Route, RouteTable, VirtualHost};
use crate::config::ConfigError;
use crate::wire;

/// `RouteConfiguration.virtual_hosts`.
const VIRTUAL_HOSTS: u32 = 2;
/// `VirtualHost.routes`.
const ROUTES: u32 = 3;

/// A RouteConfiguration as received: its own fields decoded, its virtual
/// hosts still encoded.
#[derive(Debug)]
pub struct EncodedRouteConfig {
    /// Every field but `virtual_hosts`.
    fields: RouteConfiguration,
    virtual_hosts: Vec<Bytes>,
}

impl EncodedRouteConfig {
    pub fn decode(bytes: Bytes) -> Result<EncodedRouteConfig, DecodeError> {
        let split = wire::split(&bytes, VIRTUAL_HOSTS)?;
        Ok(EncodedRouteConfig {
            fields: RouteConfiguration::decode(split.rest.as_slice())?,
            virtual_hosts: split.entries,
        })
    }

    pub fn name(&self) -> &str {
        &self.fields.name
    }

    pub(super) fn fields(&self) -> &RouteConfiguration {
        &self.fields
    }

    pub(super) fn virtual_hosts(&self) -> &[Bytes] {
        &self.virtual_hosts
    }
}

fn cannot_decode(e: DecodeError) -> ConfigError {
    ConfigError::new("", format!("cannot decode: {e}"))
}

/// The table being replaced, as far as its parts can be reused.
pub(super) struct Previous<'p> {
    /// `None` when there is none, or when every route must be compiled again.
    table: Option<&'p RouteTable>,
    by_name: OnceCell<HashMap<&'p str, usize>>,
}

impl<'p> Previous<'p> {
    pub(super) fn new(table: Option<&'p RouteTable>, max_body: usize) -> Previous<'p> {
        Previous {
            // Direct responses were checked against the old limit.
            table: table.filter(|t| t.max_body == max_body),
            by_name: OnceCell::new(),
        }
    }

    fn by_name(&self, table: &'p RouteTable) -> &HashMap<&'p str, usize> {
        self.by_name.get_or_init(|| {
            table
                .virtual_hosts
                .iter()
                .enumerate()
                .map(|(i, v)| (v.name.as_str(), i))
                .collect()
        })
    }

    /// The `i`th virtual host of the new version, encoded as `source`: the
    /// previous one when unchanged (at the same place, or moved), else its
    /// decoded fields and encoded routes, ready to compile.
    pub(super) fn virtual_host(
        &self,
        i: usize,
        source: &Bytes,
    ) -> Result<Candidate<'p>, ConfigError> {
        if let Some(t) = self.table {
            if t.sources.get(i) == Some(source) {
                return Ok(Candidate::Reused(t.virtual_hosts[i].clone()));
            }
        }
        let split = wire::split(source, ROUTES).map_err(cannot_decode)?;
        let proto = VirtualHostProto::decode(split.rest.as_slice()).map_err(cannot_decode)?;
        let mut previous = None;
        if let Some(t) = self.table {
            if let Some(&j) = self.by_name(t).get(proto.name.as_str()) {
                if t.sources[j] == *source {
                    return Ok(Candidate::Reused(t.virtual_hosts[j].clone()));
                }
                previous = PreviousRoutes::new(&t.virtual_hosts[j], &t.sources[j], &proto);
            }
        }
        Ok(Candidate::Fresh {
            proto: Box::new(proto),
            routes: split.entries,
            previous,
        })
    }
}

/// A virtual host of the new version.
pub(super) enum Candidate<'p> {
    Reused(Arc<VirtualHost>),
    Fresh {
        /// Every field but `routes`.
        proto: Box<VirtualHostProto>,
        routes: Vec<Bytes>,
        previous: Option<PreviousRoutes<'p>>,
    },
}

impl Candidate<'_> {
    pub(super) fn domains(&self) -> &[String] {
        match self {
            Candidate::Reused(v) => &v.domains,
            Candidate::Fresh { proto, .. } => &proto.domains,
        }
    }

    pub(super) fn compile(self, max_body: usize) -> Result<Arc<VirtualHost>, ConfigError> {
        let (proto, routes, previous) = match self {
            Candidate::Reused(v) => return Ok(v),
            Candidate::Fresh {
                proto,
                routes,
                previous,
            } => (proto, routes, previous),
        };
        let vh = compile_virtual_host(*proto, |retry| {
            routes
                .iter()
                .enumerate()
                .map(|(j, source)| {
                    if let Some(r) = previous.as_ref().and_then(|p| p.find(j, &routes)) {
                        return Ok(r);
                    }
                    RouteProto::decode(source.as_ref())
                        .map_err(cannot_decode)
                        .and_then(|r| compile_route(&r, retry, max_body))
                        .map(Arc::new)
                        .map_err(|e| e.at(format!("routes[{j}]")))
                })
                .collect()
        })?;
        Ok(Arc::new(vh))
    }
}

/// The routes of the previous version of a changed virtual host, reusable
/// because what they were compiled with besides their own bytes (the
/// virtual host's retry policy) is unchanged.
pub(super) struct PreviousRoutes<'p> {
    routes: &'p [Arc<Route>],
    sources: Vec<Bytes>,
    by_source: OnceCell<HashMap<Bytes, usize>>,
}

impl<'p> PreviousRoutes<'p> {
    fn new(
        vh: &'p VirtualHost,
        source: &Bytes,
        next: &VirtualHostProto,
    ) -> Option<PreviousRoutes<'p>> {
        let split = wire::split(source, ROUTES).ok()?;
        let fields = VirtualHostProto::decode(split.rest.as_slice()).ok()?;
        if fields.retry_policy != next.retry_policy || split.entries.len() != vh.routes.len() {
            return None;
        }
        Some(PreviousRoutes {
            routes: &vh.routes,
            sources: split.entries,
            by_source: OnceCell::new(),
        })
    }

    /// The previous route encoded as `next[j]`: at the same place, or,
    /// when routes were inserted or removed before it, anywhere. A route
    /// changed in place (its successor is where it was) is not looked for.
    fn find(&self, j: usize, next: &[Bytes]) -> Option<Arc<Route>> {
        let source = next.get(j)?;
        let i = if self.sources.get(j) == Some(source) {
            j
        } else if self.sources.len() == next.len() && self.sources.get(j + 1) == next.get(j + 1) {
            return None;
        } else {
            *self
                .by_source
                .get_or_init(|| {
                    self.sources
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (s.clone(), i))
                        .collect()
                })
                .get(source)?
        };
        self.routes.get(i).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::{Action, ClusterSpecifier};
    use xds_protos::envoy::config::route::v3::{
        route, route_action, route_match::PathSpecifier, RetryPolicy as RetryPolicyProto,
        RouteAction, RouteMatch,
    };

    fn to(path: &str, cluster: &str) -> RouteProto {
        RouteProto {
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix(path.into())),
                ..Default::default()
            }),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.into())),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    /// Virtual host `v{i}` for `h{i}.example`, routes `/r{j}` to `c{i}-{j}`.
    fn vhost(i: usize, routes: usize) -> VirtualHostProto {
        VirtualHostProto {
            name: format!("v{i}"),
            domains: vec![format!("h{i}.example")],
            routes: (0..routes)
                .map(|j| to(&format!("/r{j}"), &format!("c{i}-{j}")))
                .collect(),
            ..Default::default()
        }
    }

    fn config(vhosts: Vec<VirtualHostProto>) -> RouteConfiguration {
        RouteConfiguration {
            name: "rc".into(),
            virtual_hosts: vhosts,
            ..Default::default()
        }
    }

    fn compile(rc: &RouteConfiguration, previous: Option<&RouteTable>) -> RouteTable {
        let encoded = EncodedRouteConfig::decode(Bytes::from(rc.encode_to_vec())).unwrap();
        RouteTable::compile_encoded(&encoded, previous).unwrap()
    }

    /// `(virtual host, cluster)` a request for `host` and `path` goes to.
    fn routed(t: &RouteTable, host: &str, path: &str) -> Option<(String, String)> {
        let req = http::Request::builder().uri(path).body(()).unwrap();
        let m = t.find_with_random(host, &req.into_parts().0, 0)?;
        let Action::Forward(f) = &m.route.action else {
            return None;
        };
        let ClusterSpecifier::Cluster(c) = &f.cluster else {
            return None;
        };
        Some((m.virtual_host.name.clone(), c.clone()))
    }

    /// Every request a table of `vhosts × routes` answers, plus misses.
    fn same_routing(a: &RouteTable, b: &RouteTable, vhosts: usize, routes: usize) {
        for i in 0..vhosts + 1 {
            for j in 0..routes + 1 {
                let (host, path) = (format!("h{i}.example"), format!("/r{j}"));
                assert_eq!(
                    routed(a, &host, &path),
                    routed(b, &host, &path),
                    "{host}{path}"
                );
            }
        }
    }

    fn shared(a: &RouteTable, b: &RouteTable) -> Vec<bool> {
        a.virtual_hosts()
            .iter()
            .zip(b.virtual_hosts())
            .map(|(x, y)| Arc::ptr_eq(x, y))
            .collect()
    }

    #[test]
    fn one_changed_route_recompiles_only_it() {
        let mut rc = config((0..4).map(|i| vhost(i, 5)).collect());
        let v1 = compile(&rc, None);
        rc.virtual_hosts[2].routes[3] = to("/r3", "moved");
        let v2 = compile(&rc, Some(&v1));

        assert_eq!(shared(&v1, &v2), [true, true, false, true]);
        let (old, new) = (&v1.virtual_hosts()[2], &v2.virtual_hosts()[2]);
        let routes: Vec<bool> = old
            .routes
            .iter()
            .zip(&new.routes)
            .map(|(x, y)| Arc::ptr_eq(x, y))
            .collect();
        assert_eq!(routes, [true, true, true, false, true]);

        assert_eq!(
            routed(&v2, "h2.example", "/r3"),
            Some(("v2".into(), "moved".into()))
        );
        assert_eq!(
            routed(&v1, "h2.example", "/r3"),
            Some(("v2".into(), "c2-3".into())),
            "the previous table is untouched"
        );
        same_routing(&v2, &compile(&rc, None), 4, 5);
    }

    #[test]
    fn inserted_hosts_and_routes_leave_the_others_shared() {
        let mut rc = config((0..3).map(|i| vhost(i, 4)).collect());
        let v1 = compile(&rc, None);
        rc.virtual_hosts.insert(0, vhost(9, 2));
        rc.virtual_hosts[2].routes.insert(0, to("/r2", "first"));
        rc.virtual_hosts[3].routes.pop();
        let v2 = compile(&rc, Some(&v1));

        let by_name = |t: &RouteTable, n: &str| {
            t.virtual_hosts()
                .iter()
                .find(|v| v.name == n)
                .cloned()
                .unwrap()
        };
        assert!(Arc::ptr_eq(&by_name(&v1, "v0"), &by_name(&v2, "v0")));
        let (old, new) = (by_name(&v1, "v1"), by_name(&v2, "v1"));
        assert!(!Arc::ptr_eq(&old, &new));
        assert!(new.routes[1..]
            .iter()
            .zip(&old.routes)
            .all(|(x, y)| Arc::ptr_eq(x, y)));
        let (old, new) = (by_name(&v1, "v2"), by_name(&v2, "v2"));
        assert!(new
            .routes
            .iter()
            .zip(&old.routes)
            .all(|(x, y)| Arc::ptr_eq(x, y)));
        assert_eq!(new.routes.len(), 3);

        assert_eq!(
            routed(&v2, "h1.example", "/r2"),
            Some(("v1".into(), "first".into()))
        );
        assert_eq!(routed(&v2, "h2.example", "/r3"), None);
        same_routing(&v2, &compile(&rc, None), 10, 4);
    }

    /// Routes inherit the virtual host's retry policy, and direct responses
    /// are bounded by the configuration's body limit: changing either
    /// compiles the routes again.
    #[test]
    fn what_routes_inherit_invalidates_them() {
        let mut rc = config(vec![vhost(0, 2), vhost(1, 2)]);
        let v1 = compile(&rc, None);
        rc.virtual_hosts[0].retry_policy = Some(RetryPolicyProto {
            retry_on: "5xx".into(),
            num_retries: Some(7),
            ..Default::default()
        });
        let v2 = compile(&rc, Some(&v1));
        assert_eq!(shared(&v1, &v2), [false, true]);
        let retries = |t: &RouteTable| {
            let Action::Forward(f) = &t.virtual_hosts()[0].routes[0].action else {
                panic!("forward");
            };
            f.retry_policy.as_ref().map(|r| r.num_retries)
        };
        assert_eq!(retries(&v2), Some(7));
        assert_eq!(retries(&v1), None);

        rc.max_direct_response_body_size_bytes = Some(100);
        let v3 = compile(&rc, Some(&v2));
        assert_eq!(shared(&v2, &v3), [false, false]);
        same_routing(&v3, &compile(&rc, None), 2, 2);
    }

    #[test]
    fn a_bad_changed_route_names_its_place() {
        let mut rc = config(vec![vhost(0, 2), vhost(1, 3)]);
        let v1 = compile(&rc, None);
        rc.virtual_hosts[1].routes[2].r#match = None;
        let encoded = EncodedRouteConfig::decode(Bytes::from(rc.encode_to_vec())).unwrap();
        let e = RouteTable::compile_encoded(&encoded, Some(&v1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "virtual_hosts[1].routes[2].match: is required"
        );
    }
}
