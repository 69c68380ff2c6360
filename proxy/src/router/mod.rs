//! Route tables: an Envoy v3 `RouteConfiguration` compiled once into an
//! immutable structure that answers "which virtual host and route does this
//! request take", without I/O or allocation-heavy work on the request path.
//!
//! Semantics follow stock Envoy; behaviour that was unclear from the docs was
//! checked against Envoy 1.40.0 with `direct_response`/echo bootstraps and
//! curl, and is recorded next to the code that implements it:
//! domain matching with ports (`domains.rs`), header and query-parameter
//! matching (`matcher.rs`), rewrites (`rewrite.rs`), redirects
//! (`redirect.rs`), header-mutation order (`Matched`), weighted clusters and
//! retry conditions (`action.rs`, `retry.rs`).
//!
//! Fields accepted and ignored for now, because they do not change which
//! route is taken and later work adds them: `name`, `metadata` (but for
//! `trellis.appmesh`, which names the App Mesh virtual service), `decorator`,
//! `typed_per_filter_config` entries of filters trellis lacks (those of the
//! fault and local rate limit filters are compiled, see `crate::filters`),
//! the virtual host's `request_mirror_policies` (the route's are
//! implemented), `rate_limits`, `include_vh_rate_limits`,
//! `validate_clusters` (it only makes Envoy reject configs), the deprecated
//! `weighted_clusters.total_weight` (Envoy ignores it), and runtime keys
//! (`runtime_fraction.runtime_key`, `weighted_clusters.runtime_key_prefix`):
//! trellis has no runtime layer, so their default values always apply.
//! Every other field that is set but not implemented is a `ConfigError`
//! ending in "is not supported by trellis".

mod action;
mod convert;
mod domains;
mod encoded;
mod hash;
mod headers;
mod matcher;
mod redirect;
mod retry;
mod rewrite;
mod route_index;
pub(crate) mod string;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName};
use prost::Message;

use crate::stats::appmesh::metadata_name;
use xds_protos::envoy::config::core::v3::HeaderValueOption;
use xds_protos::envoy::config::route::v3::{
    route, Route as RouteProto, RouteConfiguration, VirtualHost as VirtualHostProto,
};

use crate::format::Context;
pub use action::{
    Action, ClusterSpecifier, ClusterWeight, DirectResponse, Forward, HostRewrite,
    WeightedClusters, WeightedTarget,
};
pub use encoded::EncodedRouteConfig;
pub use hash::HashPolicies;
pub use headers::{HeaderMutation, Phase};
pub use redirect::Redirect;
pub use retry::{RetryOn, RetryPolicy};
pub use rewrite::{PathRewrite, RegexRewrite, RewriteKind};

use convert::{reject_if, unsupported};
use domains::DomainIndex;
use matcher::RouteMatcher;
pub(crate) use matcher::{HeaderMatcher, RequestView};
use route_index::RouteIndex;

use crate::config::ConfigError;
use crate::filters::{compile_overrides, FilterOverride};

/// Request and response mutations of one level (route configuration,
/// virtual host or route).
#[derive(Debug, Default)]
pub struct HeaderMutations {
    pub request: HeaderMutation,
    pub response: HeaderMutation,
}

impl HeaderMutations {
    fn compile(
        request_add: &[HeaderValueOption],
        request_remove: &[String],
        response_add: &[HeaderValueOption],
        response_remove: &[String],
    ) -> Result<HeaderMutations, ConfigError> {
        Ok(HeaderMutations {
            request: HeaderMutation::compile(
                request_add,
                "request_headers_to_add",
                request_remove,
                "request_headers_to_remove",
            )?,
            response: HeaderMutation::compile(
                response_add,
                "response_headers_to_add",
                response_remove,
                "response_headers_to_remove",
            )?,
        })
    }
}

#[derive(Debug)]
pub struct RouteTable {
    name: String,
    /// Shared with the previous version of the table where unchanged.
    virtual_hosts: Vec<Arc<VirtualHost>>,
    /// Each virtual host's encoding, for the next version to compare with.
    sources: Vec<Bytes>,
    /// `max_direct_response_body_size_bytes`, which every route compiled
    /// under; a change recompiles them all.
    max_body: usize,
    domains: DomainIndex,
    ignore_port_in_host_matching: bool,
    vhost_header: Option<HeaderName>,
    headers: HeaderMutations,
    most_specific_header_mutations_wins: bool,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    /// Shared with the previous version of the virtual host where unchanged.
    pub routes: Vec<Arc<Route>>,
    /// Narrows the routes to try when there are many.
    index: Option<RouteIndex>,
    pub headers: HeaderMutations,
    /// `include_request_attempt_count`: `x-envoy-attempt-count` upstream.
    pub request_attempt_count: bool,
    /// `include_attempt_count_in_response`: the same on the response.
    pub response_attempt_count: bool,
    /// `typed_per_filter_config` of the filters trellis implements.
    pub filter_overrides: Vec<(String, FilterOverride)>,
    /// The App Mesh virtual service this host stands for (`trellis.appmesh`
    /// metadata), for per-peer stats.
    pub appmesh_service: Option<Arc<str>>,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    matcher: RouteMatcher,
    pub action: Action,
    pub headers: HeaderMutations,
    /// `typed_per_filter_config` of the filters trellis implements.
    pub filter_overrides: Vec<(String, FilterOverride)>,
    /// Like the virtual host's, which it overrides.
    pub appmesh_service: Option<Arc<str>>,
}

/// The result of a lookup.
#[derive(Debug, Clone, Copy)]
pub struct Matched<'a> {
    pub virtual_host: &'a VirtualHost,
    pub route: &'a Route,
    /// The random value `runtime_fraction` was evaluated with. Envoy uses
    /// the same per-request value to pick among `weighted_clusters`, so pass
    /// it to [`WeightedClusters::pick`].
    pub random: u64,
    table: &'a RouteTable,
}

impl<'a> Matched<'a> {
    /// The levels' mutations in the order Envoy applies them, later ones
    /// winning: route, virtual host, route configuration; reversed when
    /// `most_specific_header_mutations_wins`. Verified against Envoy 1.40:
    /// with an overwriting `x-order` at all three levels the response
    /// carries the route configuration's, and appended `x-app` values come
    /// out as `route, vh, rc`.
    pub fn header_mutations(&self) -> [&'a HeaderMutations; 3] {
        let levels = [
            &self.route.headers,
            &self.virtual_host.headers,
            &self.table.headers,
        ];
        if self.table.most_specific_header_mutations_wins {
            [levels[2], levels[1], levels[0]]
        } else {
            levels
        }
    }

    /// `ctx` feeds command operators in header values (`%REQ(...)%`, ...).
    pub fn apply_request_headers(&self, headers: &mut HeaderMap, ctx: &Context<'_>) {
        for level in self.header_mutations() {
            level.request.apply(headers, ctx, Phase::Request);
        }
    }

    pub fn apply_response_headers(&self, headers: &mut HeaderMap, ctx: &Context<'_>) {
        for level in self.header_mutations() {
            level.response.apply(headers, ctx, Phase::Response);
        }
    }

    /// The App Mesh virtual service the request is sent to, if named.
    pub fn appmesh_service(&self) -> Option<&'a Arc<str>> {
        self.route
            .appmesh_service
            .as_ref()
            .or(self.virtual_host.appmesh_service.as_ref())
    }

    /// Whether a response header value reads the request, so the request's
    /// headers must outlive the trip upstream.
    pub fn response_reads_request(&self) -> bool {
        self.header_mutations()
            .iter()
            .any(|l| l.response.reads_request())
    }
}

impl RouteTable {
    /// Compiles a RouteConfiguration given whole (bootstrap, HCM `route_config`).
    pub fn compile(rc: &RouteConfiguration) -> Result<RouteTable, ConfigError> {
        let encoded = EncodedRouteConfig::decode(Bytes::from(rc.encode_to_vec()))
            .map_err(|e| ConfigError::new("", format!("cannot decode: {e}")))?;
        RouteTable::compile_encoded(&encoded, None)
    }

    /// Compiles a RouteConfiguration as received over RDS. Virtual hosts and
    /// routes whose encoding equals `previous`'s are shared with it instead
    /// of being decoded and compiled again.
    pub fn compile_encoded(
        rc: &EncodedRouteConfig,
        previous: Option<&RouteTable>,
    ) -> Result<RouteTable, ConfigError> {
        let top = rc.fields();
        reject_if(top.vhds.is_some(), "vhds")?;
        reject_if(
            !top.internal_only_headers.is_empty(),
            "internal_only_headers",
        )?;
        reject_if(
            !top.cluster_specifier_plugins.is_empty(),
            "cluster_specifier_plugins",
        )?;
        reject_if(
            top.ignore_path_parameters_in_path_matching,
            "ignore_path_parameters_in_path_matching",
        )?;
        reject_if(!top.route_specifiers.is_empty(), "route_specifiers")?;
        let vhost_header = match top.vhost_header.as_str() {
            "" => None,
            h => Some(HeaderName::from_bytes(h.as_bytes()).map_err(|e| {
                ConfigError::new("vhost_header", format!("invalid header name: {e}"))
            })?),
        };
        let max_body = top.max_direct_response_body_size_bytes.unwrap_or(4096) as usize;
        let previous = encoded::Previous::new(previous, max_body);
        let mut domains = DomainIndex::default();
        let sources = rc.virtual_hosts().to_vec();
        let mut virtual_hosts = Vec::with_capacity(sources.len());
        for (i, source) in sources.iter().enumerate() {
            let at = |e: ConfigError| e.at(format!("virtual_hosts[{i}]"));
            let candidate = previous.virtual_host(i, source).map_err(at)?;
            let vh_domains = candidate.domains();
            if vh_domains.is_empty() {
                return Err(at(ConfigError::new(
                    "domains",
                    "at least one domain is required",
                )));
            }
            for (j, d) in vh_domains.iter().enumerate() {
                domains.insert(d, j, i).map_err(at)?;
            }
            virtual_hosts.push(candidate.compile(max_body).map_err(at)?);
        }
        Ok(RouteTable {
            name: top.name.clone(),
            virtual_hosts,
            sources,
            max_body,
            domains,
            ignore_port_in_host_matching: top.ignore_port_in_host_matching,
            vhost_header,
            headers: HeaderMutations::compile(
                &top.request_headers_to_add,
                &top.request_headers_to_remove,
                &top.response_headers_to_add,
                &top.response_headers_to_remove,
            )?,
            most_specific_header_mutations_wins: top.most_specific_header_mutations_wins,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn virtual_hosts(&self) -> &[Arc<VirtualHost>] {
        &self.virtual_hosts
    }

    /// `host` is the request authority (Host header or `:authority`), as
    /// received. `runtime_fraction` is evaluated with a fresh random value,
    /// returned in [`Matched::random`].
    pub fn find<'a>(&'a self, host: &str, req: &http::request::Parts) -> Option<Matched<'a>> {
        self.find_with_random(host, req, crate::rng::random())
    }

    /// [`find`](Self::find) with the per-request random value supplied, for
    /// callers that already have one (Envoy uses the stream id) and tests.
    pub fn find_with_random<'a>(
        &'a self,
        host: &str,
        req: &http::request::Parts,
        random: u64,
    ) -> Option<Matched<'a>> {
        // With `vhost_header` set and absent, Envoy selects no virtual host,
        // not even `*` (verified against Envoy 1.40: 404).
        let vhost_key = match &self.vhost_header {
            None => host,
            Some(h) => req.headers.get(h).and_then(|v| v.to_str().ok())?,
        };
        let virtual_host = self
            .domains
            .find(vhost_key, self.ignore_port_in_host_matching)
            .and_then(|i| self.virtual_hosts.get(i))?;
        let view = RequestView::new(host, req, request_path(req), random);
        let route = match &virtual_host.index {
            Some(index) => index.find(&virtual_host.routes, &view)?,
            None => virtual_host
                .routes
                .iter()
                .find(|r| r.matcher.matches(&view))?,
        };
        Some(Matched {
            virtual_host,
            route: route.as_ref(),
            random,
            table: self,
        })
    }
}

/// `:path`. Only CONNECT requests lack one (authority-form); an absolute-form
/// URI with an empty path means `/`.
pub(crate) fn request_path(req: &http::request::Parts) -> Option<&str> {
    match req.uri.path_and_query() {
        Some(pq) => Some(pq.as_str()),
        None if req.method == http::Method::CONNECT => None,
        None => Some("/"),
    }
}

/// Compiles `vh`'s own fields; `routes` compiles its routes, given the
/// virtual host's retry policy, which routes without one inherit.
#[allow(deprecated)]
fn compile_virtual_host(
    vh: VirtualHostProto,
    routes: impl FnOnce(Option<&RetryPolicy>) -> Result<Vec<Arc<Route>>, ConfigError>,
) -> Result<VirtualHost, ConfigError> {
    if vh.name.is_empty() {
        return Err(ConfigError::new("name", "must not be empty"));
    }
    reject_if(vh.matcher.is_some(), "matcher")?;
    reject_if(vh.require_tls != 0, "require_tls")?;
    reject_if(!vh.virtual_clusters.is_empty(), "virtual_clusters")?;
    reject_if(vh.cors.is_some(), "cors")?;
    reject_if(
        vh.include_is_timeout_retry_header,
        "include_is_timeout_retry_header",
    )?;
    reject_if(
        vh.retry_policy_typed_config.is_some(),
        "retry_policy_typed_config",
    )?;
    reject_if(vh.hedge_policy.is_some(), "hedge_policy")?;
    reject_if(
        vh.per_request_buffer_limit_bytes.is_some(),
        "per_request_buffer_limit_bytes",
    )?;
    reject_if(
        vh.request_body_buffer_limit.is_some(),
        "request_body_buffer_limit",
    )?;
    reject_if(!vh.route_specifiers.is_empty(), "route_specifiers")?;
    let retry = vh
        .retry_policy
        .as_ref()
        .map(|p| RetryPolicy::compile(p).map_err(|e| e.at("retry_policy")))
        .transpose()?;
    let routes = routes(retry.as_ref())?;
    Ok(VirtualHost {
        headers: HeaderMutations::compile(
            &vh.request_headers_to_add,
            &vh.request_headers_to_remove,
            &vh.response_headers_to_add,
            &vh.response_headers_to_remove,
        )?,
        request_attempt_count: vh.include_request_attempt_count,
        response_attempt_count: vh.include_attempt_count_in_response,
        filter_overrides: compile_overrides(&vh.typed_per_filter_config)?,
        appmesh_service: metadata_name(vh.metadata.as_ref(), "virtual_service"),
        name: vh.name,
        domains: vh.domains,
        index: RouteIndex::build(&routes),
        routes,
    })
}

#[allow(deprecated)]
fn compile_route(
    r: &RouteProto,
    vhost_retry: Option<&RetryPolicy>,
    max_body: usize,
) -> Result<Route, ConfigError> {
    reject_if(r.tracing.is_some(), "tracing")?;
    reject_if(
        r.per_request_buffer_limit_bytes.is_some(),
        "per_request_buffer_limit_bytes",
    )?;
    reject_if(
        r.request_body_buffer_limit.is_some(),
        "request_body_buffer_limit",
    )?;
    reject_if(!r.stat_prefix.is_empty(), "stat_prefix")?;
    reject_if(!r.route_specifiers.is_empty(), "route_specifiers")?;
    let m = r
        .r#match
        .as_ref()
        .ok_or_else(|| ConfigError::new("match", "is required"))?;
    let matcher = RouteMatcher::compile(m).map_err(|e| e.at("match"))?;
    let span = matcher.span();
    let action = match &r.action {
        Some(route::Action::Route(a)) => {
            Action::Forward(Forward::compile(a, span, vhost_retry).map_err(|e| e.at("route"))?)
        }
        Some(route::Action::Redirect(a)) => {
            Action::Redirect(Redirect::compile(a, span).map_err(|e| e.at("redirect"))?)
        }
        Some(route::Action::DirectResponse(d)) => Action::DirectResponse(
            DirectResponse::compile(d, max_body).map_err(|e| e.at("direct_response"))?,
        ),
        Some(route::Action::FilterAction(_)) => return Err(unsupported("filter_action")),
        Some(route::Action::NonForwardingAction(_)) => {
            return Err(unsupported("non_forwarding_action"))
        }
        None => {
            return Err(ConfigError::new(
                "",
                "one of route, redirect or direct_response is required",
            ))
        }
    };
    Ok(Route {
        name: r.name.clone(),
        matcher,
        action,
        headers: HeaderMutations::compile(
            &r.request_headers_to_add,
            &r.request_headers_to_remove,
            &r.response_headers_to_add,
            &r.response_headers_to_remove,
        )?,
        filter_overrides: compile_overrides(&r.typed_per_filter_config)?,
        appmesh_service: metadata_name(r.metadata.as_ref(), "virtual_service"),
    })
}

#[cfg(test)]
mod tests;
