//! The path algebra of a gateway route: what App Mesh's rewrites do to the
//! path, and the path criterion that a gateway route and one route of the
//! target's virtual router match together.
//!
//! Envoy cannot hand a request from one route table to another, so a gateway
//! route to a routed virtual service becomes one Envoy route per route of the
//! router, matching what both would have matched in turn: the router's
//! criterion applies to the path *after* the gateway's rewrite, and is turned
//! back into a criterion on the path the client sent.

use serde_json::{json, Value};

use crate::xds::spec::{GatewayHttpRoute, HttpMatch};

/// A path criterion of an Envoy route match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(String),
}

impl PathMatch {
    /// An App Mesh match's path criterion; none means every path.
    pub(super) fn of(m: &HttpMatch) -> PathMatch {
        match (&m.prefix, m.path.as_ref()) {
            (Some(p), _) => PathMatch::Prefix(p.clone()),
            (None, Some(p)) => match (&p.exact, &p.regex) {
                (Some(e), _) => PathMatch::Exact(e.clone()),
                (None, Some(r)) => PathMatch::Regex(r.clone()),
                (None, None) => PathMatch::Prefix("/".into()),
            },
            (None, None) => PathMatch::Prefix("/".into()),
        }
    }

    /// Replaces the path criterion of an Envoy route match.
    pub(super) fn set(&self, out: &mut Value) {
        if let Some(o) = out.as_object_mut() {
            for key in ["prefix", "path", "safe_regex"] {
                o.remove(key);
            }
            let (key, value) = match self {
                PathMatch::Prefix(p) => ("prefix", json!(p)),
                PathMatch::Exact(e) => ("path", json!(e)),
                PathMatch::Regex(r) => ("safe_regex", json!({"regex": r})),
            };
            o.insert(key.into(), value);
        }
    }

    /// Whether a path known in advance meets the criterion (a regex must
    /// match the whole path, as in Envoy; one that does not compile never
    /// matches).
    fn accepts(&self, path: &str) -> bool {
        match self {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(e) => path == e,
            PathMatch::Regex(r) => {
                regex::Regex::new(&format!("^(?:{r})$")).is_ok_and(|re| re.is_match(path))
            }
        }
    }
}

/// What a gateway route does to the path on its way upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Upstream {
    /// Always this path: an exact match, or a path rewrite (`rewritten`).
    Fixed { path: String, rewritten: bool },
    /// A matched prefix replaced: `matched` becomes `replacement`.
    Prefix {
        matched: String,
        replacement: String,
    },
    /// A regex match, passed on as it is.
    Unchanged,
}

impl Upstream {
    /// App Mesh's rules: `path.exact` replaces the path; a matched prefix
    /// becomes `/` unless `defaultPrefix` is DISABLED (then it stays), or
    /// becomes `prefix.value`.
    pub(super) fn of(route: &GatewayHttpRoute) -> Upstream {
        let rewrite = route.action.rewrite.as_ref();
        if let Some(exact) = rewrite
            .and_then(|r| r.path.as_ref())
            .and_then(|p| p.exact.clone())
        {
            return Upstream::Fixed {
                path: exact,
                rewritten: true,
            };
        }
        match PathMatch::of(&route.matcher) {
            PathMatch::Prefix(matched) => {
                let prefix = rewrite.and_then(|r| r.prefix.as_ref());
                let replacement = match (
                    prefix.and_then(|p| p.value.clone()),
                    prefix.and_then(|p| p.default_prefix.as_deref()),
                ) {
                    (Some(v), _) => v,
                    (None, Some("DISABLED")) => matched.clone(),
                    (None, _) => "/".into(),
                };
                Upstream::Prefix {
                    matched,
                    replacement,
                }
            }
            PathMatch::Exact(path) => Upstream::Fixed {
                path,
                rewritten: false,
            },
            PathMatch::Regex(_) => Upstream::Unchanged,
        }
    }

    /// The route-action fields that perform this rewrite on their own.
    pub(super) fn rewrite(&self) -> Rewrite {
        match self {
            Upstream::Fixed {
                path,
                rewritten: true,
            } => Rewrite::Whole(path.clone()),
            Upstream::Prefix {
                matched,
                replacement,
            } if matched != replacement => {
                if absorbs_slash(matched, replacement) {
                    Rewrite::PrefixAndSlash {
                        matched: matched.clone(),
                    }
                } else {
                    Rewrite::Prefix(replacement.clone())
                }
            }
            _ => Rewrite::None,
        }
    }

    /// The criterion on the client's path that selects the requests whose
    /// upstream path meets `inner` (a router route's path criterion), and
    /// the rewrite to apply; `None` when no request can meet both.
    pub(super) fn narrow(&self, inner: &PathMatch) -> Option<Narrowed> {
        let own = Narrowed::Own;
        match self {
            Upstream::Fixed { path, .. } => inner.accepts(path).then_some(own),
            Upstream::Unchanged => (inner == &PathMatch::Prefix("/".into())).then_some(own),
            Upstream::Prefix {
                matched,
                replacement,
            } => {
                // "/chapter" → "/": "/chapter/1" goes up as "/1".
                let matched = if absorbs_slash(matched, replacement) {
                    format!("{matched}/")
                } else {
                    matched.clone()
                };
                match inner {
                    PathMatch::Prefix(p) if replacement.starts_with(p.as_str()) => Some(own),
                    PathMatch::Prefix(p) => {
                        let rest = p.strip_prefix(replacement.as_str())?;
                        Some(Narrowed::To {
                            path: PathMatch::Prefix(format!("{matched}{rest}")),
                            rewrite: Rewrite::Prefix(p.clone()),
                        })
                    }
                    PathMatch::Exact(e) => {
                        let rest = e.strip_prefix(replacement.as_str())?;
                        Some(Narrowed::To {
                            path: PathMatch::Exact(format!("{matched}{rest}")),
                            rewrite: Rewrite::Whole(e.clone()),
                        })
                    }
                    // Envoy cannot match a prefix and a regex at once; only
                    // an untouched whole-path prefix leaves the regex as is.
                    PathMatch::Regex(_) if matched == "/" && replacement == "/" => {
                        Some(Narrowed::To {
                            path: inner.clone(),
                            rewrite: Rewrite::None,
                        })
                    }
                    PathMatch::Regex(_) => None,
                }
            }
        }
    }
}

/// App Mesh's documented default: prefix `/chapter` sends `/chapter/1` up as
/// `/1`, so a replacement `/` also takes the slash after a prefix that does
/// not end in one.
fn absorbs_slash(matched: &str, replacement: &str) -> bool {
    replacement == "/" && !matched.ends_with('/')
}

/// How a gateway route and a router route match together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Narrowed {
    /// The gateway route's own criterion and rewrite.
    Own,
    /// A narrower criterion on the client's path, with its own rewrite.
    To { path: PathMatch, rewrite: Rewrite },
}

/// A path rewrite in route-action fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Rewrite {
    None,
    /// `prefix_rewrite`.
    Prefix(String),
    /// The matched prefix and the slash after it become `/`.
    PrefixAndSlash {
        matched: String,
    },
    /// The whole path becomes this one.
    Whole(String),
}

impl Rewrite {
    pub(super) fn apply(&self, action: &mut Value) {
        match self {
            Rewrite::None => {}
            Rewrite::Prefix(p) => action["prefix_rewrite"] = json!(p),
            Rewrite::PrefixAndSlash { matched } => {
                action["regex_rewrite"] = json!({
                    "pattern": {"regex": format!("^{}/?", regex::escape(matched))},
                    "substitution": "/",
                })
            }
            Rewrite::Whole(p) => {
                action["regex_rewrite"] = json!({"pattern": {"regex": "^.*$"}, "substitution": p})
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(matched: &str, replacement: &str) -> Upstream {
        Upstream::Prefix {
            matched: matched.into(),
            replacement: replacement.into(),
        }
    }

    fn p(s: &str) -> PathMatch {
        PathMatch::Prefix(s.into())
    }

    #[test]
    fn a_default_rewrite_to_root_takes_the_slash_after_the_prefix() {
        assert_eq!(
            prefix("/chapter", "/").rewrite(),
            Rewrite::PrefixAndSlash {
                matched: "/chapter".into()
            }
        );
        assert_eq!(
            prefix("/chapter/", "/").rewrite(),
            Rewrite::Prefix("/".into())
        );
        assert_eq!(prefix("/same", "/same").rewrite(), Rewrite::None);
    }

    #[test]
    fn router_prefixes_become_prefixes_on_the_client_path() {
        // Gateway /color/ → /, router /blue → client /color/blue.
        assert_eq!(
            prefix("/color/", "/").narrow(&p("/blue")),
            Some(Narrowed::To {
                path: p("/color/blue"),
                rewrite: Rewrite::Prefix("/blue".into())
            })
        );
        // Without a trailing slash the slash is App Mesh's to add.
        assert_eq!(
            prefix("/color", "/").narrow(&p("/blue")),
            Some(Narrowed::To {
                path: p("/color/blue"),
                rewrite: Rewrite::Prefix("/blue".into())
            })
        );
        // A router prefix every rewritten path has: the gateway's own.
        assert_eq!(prefix("/color/", "/").narrow(&p("/")), Some(Narrowed::Own));
        // Rewritten to /v2/, a router prefix /v1 never matches.
        assert_eq!(prefix("/api/", "/v2/").narrow(&p("/v1")), None);
        assert_eq!(
            prefix("/api/", "/api/").narrow(&PathMatch::Exact("/api/x".into())),
            Some(Narrowed::To {
                path: PathMatch::Exact("/api/x".into()),
                rewrite: Rewrite::Whole("/api/x".into())
            })
        );
    }

    #[test]
    fn fixed_paths_are_checked_once_at_translation() {
        let fixed = Upstream::Fixed {
            path: "/health".into(),
            rewritten: true,
        };
        assert_eq!(fixed.narrow(&p("/he")), Some(Narrowed::Own));
        assert_eq!(fixed.narrow(&p("/x")), None);
        assert_eq!(
            fixed.narrow(&PathMatch::Regex("/h[a-z]+".into())),
            Some(Narrowed::Own)
        );
        // Envoy's regexes match the whole path.
        assert_eq!(fixed.narrow(&PathMatch::Regex("/h".into())), None);
    }

    #[test]
    fn a_regex_gateway_match_takes_only_catch_all_router_routes() {
        assert_eq!(Upstream::Unchanged.narrow(&p("/")), Some(Narrowed::Own));
        assert_eq!(Upstream::Unchanged.narrow(&p("/a")), None);
    }
}
