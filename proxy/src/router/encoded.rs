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
            proto,
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
        proto: VirtualHostProto,
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
        let vh = compile_virtual_host(proto, |retry| {
            routes
                .iter()
                .enumerate()
                .map(|(j, source)| {
                    if let Some(r) = previous.as_ref().and_then(|p| p.find(j, source)) {
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

    /// The previous route encoded as `source`, looked for at the same place
    /// first (a route changed in place), then anywhere (routes inserted or
    /// removed before it).
    fn find(&self, j: usize, source: &Bytes) -> Option<Arc<Route>> {
        let i = if self.sources.get(j) == Some(source) {
            j
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
