//! Candidate routes for a path, so that a virtual host with thousands of
//! routes (a virtual gateway puts all of its routes in one) is not tried
//! route by route. Envoy's first-match order is kept: the index only rules
//! out routes whose literal path condition cannot hold, and the rest are
//! still tried in configuration order, the first full match winning.
//!
//! Routes with a case-sensitive literal (`prefix`, `path`,
//! `path_separated_prefix`) are found by the hash of their literal: exact
//! paths by the request path's, prefixes by the hash of the path's prefix
//! of each configured length, all hashed in one pass over the path. Every
//! other route (regex, case-insensitive, CONNECT) is a candidate for every
//! request.

use std::sync::Arc;

use super::matcher::{PathKey, RequestView};
use super::Route;

/// Below this many routes a plain scan is as fast as the lookups.
const MIN_ROUTES: usize = 32;

/// `(hash of the literal, route)`, sorted: a lookup is a binary search,
/// and building one for 10,000 routes is one allocation and a sort. Routes
/// whose literals collide are all tried, and the matcher decides.
type Keyed = Vec<(u64, u32)>;

#[derive(Debug, Default)]
pub(crate) struct RouteIndex {
    exact: Keyed,
    prefixes: Keyed,
    /// The distinct prefix lengths, ascending.
    prefix_lens: Vec<usize>,
    other: Vec<u32>,
}

/// FNV-1a, byte by byte, so that the hashes of all prefixes of a path come
/// out of one pass over it. Keys come from the config, never from requests,
/// so a keyed hash buys nothing here.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

fn fnv_step(h: u64, b: u8) -> u64 {
    (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(FNV_OFFSET, fnv_step)
}

/// The routes keyed `h`, in configuration order.
fn keyed(list: &Keyed, h: u64) -> impl Iterator<Item = u32> + '_ {
    let start = list.partition_point(|&(k, _)| k < h);
    list[start..]
        .iter()
        .take_while(move |&&(k, _)| k == h)
        .map(|&(_, i)| i)
}

impl RouteIndex {
    /// `None` when the routes are too few to be worth an index.
    pub(crate) fn build(routes: &[Arc<Route>]) -> Option<RouteIndex> {
        if routes.len() < MIN_ROUTES {
            return None;
        }
        let mut index = RouteIndex::default();
        for (i, r) in routes.iter().enumerate() {
            let i = u32::try_from(i).ok()?;
            match r.matcher.path_key() {
                PathKey::Exact(p) => index.exact.push((fnv(p), i)),
                PathKey::Prefix(p) => {
                    index.prefixes.push((fnv(p), i));
                    index.prefix_lens.push(p.len());
                }
                PathKey::None => index.other.push(i),
            }
        }
        index.exact.sort_unstable();
        index.prefixes.sort_unstable();
        index.prefix_lens.sort_unstable();
        index.prefix_lens.dedup();
        Some(index)
    }

    /// The first route, in configuration order, that matches.
    pub(crate) fn find<'r>(
        &self,
        routes: &'r [Arc<Route>],
        view: &RequestView<'_>,
    ) -> Option<&'r Arc<Route>> {
        let mut best = usize::MAX;
        // Each list is in configuration order: its first match is the only
        // one that can beat `best`.
        let mut try_list = |list: &mut dyn Iterator<Item = u32>| {
            for i in list {
                let i = i as usize;
                if i >= best {
                    return;
                }
                if routes.get(i).is_some_and(|r| r.matcher.matches(view)) {
                    best = i;
                    return;
                }
            }
        };
        try_list(&mut self.other.iter().copied());
        if let Some(path) = view.path_only {
            try_list(&mut keyed(&self.exact, fnv(path)));
            let mut lens = self.prefix_lens.iter().peekable();
            let mut h = FNV_OFFSET;
            for (n, b) in path.bytes().map(Some).chain([None]).enumerate() {
                if lens.next_if_eq(&&n).is_some() {
                    try_list(&mut keyed(&self.prefixes, h));
                }
                match b {
                    Some(b) if lens.peek().is_some() => h = fnv_step(h, b),
                    _ => break,
                }
            }
        }
        routes.get(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::{request_path, RouteTable};
    use xds_protos::envoy::config::route::v3::{
        header_matcher::HeaderMatchSpecifier, route, route_match::PathSpecifier,
        DirectResponseAction, HeaderMatcher, Route as RouteProto, RouteConfiguration, RouteMatch,
        VirtualHost,
    };
    use xds_protos::envoy::r#type::matcher::v3::StringMatcher;
    use xds_protos::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, RegexMatcher};

    fn route(path: PathSpecifier, case_sensitive: bool, canary: bool) -> RouteProto {
        let headers = canary.then(|| HeaderMatcher {
            name: "x-canary".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Exact("true".into())),
                ignore_case: false,
            })),
            ..Default::default()
        });
        RouteProto {
            r#match: Some(RouteMatch {
                path_specifier: Some(path),
                case_sensitive: Some(case_sensitive),
                headers: headers.into_iter().collect(),
                ..Default::default()
            }),
            action: Some(route::Action::DirectResponse(DirectResponseAction {
                status: 200,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    /// Every kind of path condition, at many lengths, in an order where
    /// earlier routes shadow later ones for some paths and not others.
    fn routes() -> Vec<RouteProto> {
        let mut out: Vec<RouteProto> = (0..210)
            .map(|k| match k % 7 {
                0 => route(
                    PathSpecifier::Prefix(format!("/a/{}/", k % 13)),
                    true,
                    false,
                ),
                1 => route(PathSpecifier::Path(format!("/a/{}/x", k % 13)), true, false),
                2 => route(
                    PathSpecifier::PathSeparatedPrefix(format!("/a/{}", k % 5)),
                    true,
                    false,
                ),
                3 => route(
                    PathSpecifier::SafeRegex(RegexMatcher {
                        regex: format!("/a/[0-9]+/y{}", k % 3),
                        ..Default::default()
                    }),
                    true,
                    false,
                ),
                4 => route(PathSpecifier::Prefix(format!("/A/{}", k % 3)), false, false),
                5 => route(PathSpecifier::Prefix("/a".into()), true, true),
                _ => route(PathSpecifier::Prefix(format!("/{}", k % 4)), true, false),
            })
            .collect();
        out.push(route(PathSpecifier::Prefix(String::new()), true, false));
        out
    }

    #[test]
    fn the_index_picks_what_a_scan_picks() {
        let t = RouteTable::compile(&RouteConfiguration {
            virtual_hosts: vec![VirtualHost {
                name: "v".into(),
                domains: vec!["*".into()],
                routes: routes(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .unwrap();
        let vh = &t.virtual_hosts()[0];
        let index = vh.index.as_ref().expect("indexed");
        let fixed = [
            "/",
            "/a",
            "/a/",
            "/a/1/",
            "/a/1/x?q=1",
            "/a/12/y2",
            "/a/7/y1#f",
            "/a/3/more",
            "/a/34",
            "/A/2",
            "/a/2/zz",
            "/3",
            "/3/a",
            "/zzz",
            "/ä/1",
        ];
        let generated = (0..14).flat_map(|n| [format!("/a/{n}"), format!("/a/{n}/x")]);
        let paths: Vec<String> = fixed
            .iter()
            .map(|p| p.to_string())
            .chain(generated)
            .collect();
        let mut found = std::collections::BTreeSet::new();
        for path in &paths {
            for canary in [false, true] {
                let mut b = http::Request::builder().uri(path);
                if canary {
                    b = b.header("x-canary", "true");
                }
                let parts = b.body(()).unwrap().into_parts().0;
                let view = RequestView::new("h", &parts, request_path(&parts), 0);
                let scanned = vh.routes.iter().position(|r| r.matcher.matches(&view));
                let indexed = index
                    .find(&vh.routes, &view)
                    .and_then(|r| vh.routes.iter().position(|x| Arc::ptr_eq(x, r)));
                assert_eq!(indexed, scanned, "{path} canary={canary}");
                found.insert(scanned);
            }
        }
        assert!(found.len() > 12, "the paths reach many routes: {found:?}");
        let connect = http::Request::builder()
            .method("CONNECT")
            .uri("h:443")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert!(t.find("h", &connect).is_none());
    }
}
