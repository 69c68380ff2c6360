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

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::matcher::{PathKey, RequestView};
use super::Route;

/// Below this many routes a plain scan is as fast as the lookups.
const MIN_ROUTES: usize = 32;

/// Routes by the hash of their literal. Routes whose literals collide are
/// all tried, and the matcher decides. Built with one sort and no
/// allocation per route, so rebuilding it for 10,000 routes is cheap.
#[derive(Debug, Default)]
struct Keyed {
    /// Route numbers, grouped by hash, each group in configuration order.
    routes: Vec<u32>,
    /// Hash → its group's span in `routes`.
    spans: HashMap<u64, (u32, u32), BuildHasherDefault<Prehashed>>,
}

impl Keyed {
    fn new(mut pairs: Vec<(u64, u32)>) -> Keyed {
        pairs.sort_unstable();
        let mut spans = HashMap::default();
        let mut start = 0;
        for (n, &(h, _)) in pairs.iter().enumerate() {
            if pairs.get(n + 1).is_none_or(|&(next, _)| next != h) {
                // Route numbers are u32, so are their positions.
                spans.insert(h, (start as u32, n as u32 + 1));
                start = n + 1;
            }
        }
        Keyed {
            routes: pairs.into_iter().map(|(_, i)| i).collect(),
            spans,
        }
    }

    fn get(&self, h: u64) -> &[u32] {
        self.spans
            .get(&h)
            .and_then(|&(s, e)| self.routes.get(s as usize..e as usize))
            .unwrap_or_default()
    }
}

/// The keys are FNV-1a hashes already.
#[derive(Debug, Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = bytes.iter().fold(self.0, |h, &b| fnv_step(h, b));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

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

impl RouteIndex {
    /// `None` when the routes are too few to be worth an index.
    pub(crate) fn build(routes: &[Arc<Route>]) -> Option<RouteIndex> {
        if routes.len() < MIN_ROUTES {
            return None;
        }
        let (mut exact, mut prefixes) = (Vec::new(), Vec::new());
        let (mut prefix_lens, mut other) = (Vec::new(), Vec::new());
        for (i, r) in routes.iter().enumerate() {
            let i = u32::try_from(i).ok()?;
            match r.matcher.path_key() {
                PathKey::Exact(p) => exact.push((fnv(p), i)),
                PathKey::Prefix(p) => {
                    prefixes.push((fnv(p), i));
                    prefix_lens.push(p.len());
                }
                PathKey::None => other.push(i),
            }
        }
        prefix_lens.sort_unstable();
        prefix_lens.dedup();
        Some(RouteIndex {
            exact: Keyed::new(exact),
            prefixes: Keyed::new(prefixes),
            prefix_lens,
            other,
        })
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
        let mut try_list = |list: &[u32]| {
            for &i in list {
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
        try_list(&self.other);
        if let Some(path) = view.path_only {
            try_list(self.exact.get(fnv(path)));
            let mut lens = self.prefix_lens.iter().peekable();
            let mut h = FNV_OFFSET;
            for (n, b) in path.bytes().map(Some).chain([None]).enumerate() {
                if lens.next_if_eq(&&n).is_some() {
                    try_list(self.prefixes.get(h));
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
