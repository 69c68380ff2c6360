//! `RouteMatch`: the path specifier plus header, query-parameter, gRPC and
//! runtime-fraction conditions. All must hold; none has side effects, so the
//! cheap and selective path test runs first.

use http::header::{HeaderName, CONTENT_TYPE};
use xds_protos::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    route_match::PathSpecifier, HeaderMatcher as HeaderMatcherProto,
    QueryParameterMatcher as QueryParameterMatcherProto, RouteMatch,
};
use xds_protos::envoy::r#type::v3::fractional_percent::DenominatorType;

use super::convert::{reject_if, unsupported};
use super::string::{full_match_regex, StringMatcher};
use crate::config::ConfigError;

/// What the matchers look at, computed once per lookup.
pub(crate) struct RequestView<'r> {
    pub(crate) host: &'r str,
    pub(crate) parts: &'r http::request::Parts,
    /// `:path` including the query; `None` for path-less (CONNECT) requests.
    pub(crate) path: Option<&'r str>,
    /// `path` without its query and fragment, which path conditions test.
    pub(crate) path_only: Option<&'r str>,
    pub(crate) random: u64,
}

impl<'r> RequestView<'r> {
    pub(crate) fn new(
        host: &'r str,
        parts: &'r http::request::Parts,
        path: Option<&'r str>,
        random: u64,
    ) -> RequestView<'r> {
        RequestView {
            host,
            parts,
            path,
            path_only: path.map(path_without_query),
            random,
        }
    }
}

/// Which part of the request path a `prefix_rewrite` replaces. Envoy replaces
/// exactly as many bytes as the configured prefix or path has (even when
/// matched case-insensitively), and the whole query-less path for regexes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum MatchedSpan {
    Len(usize),
    PathWithoutQuery,
}

#[derive(Debug)]
enum PathMatch {
    Prefix(String),
    Exact(String),
    SeparatedPrefix(String),
    Regex(regex::bytes::Regex),
    /// `connect_matcher`: CONNECT requests (which have no path), and only them.
    Connect,
}

#[derive(Debug)]
pub(crate) struct RouteMatcher {
    path: PathMatch,
    case_sensitive: bool,
    headers: Vec<HeaderMatcher>,
    query_parameters: Vec<QueryParameterMatcher>,
    grpc: bool,
    /// Matches when `random % denominator < numerator`, as Envoy's
    /// `featureEnabled` does with the runtime key's default value.
    runtime_fraction: Option<(u64, u64)>,
}

/// The literal a route's path condition needs, for the route index.
pub(crate) enum PathKey<'a> {
    /// The path without its query must be exactly this.
    Exact(&'a str),
    /// The path must start with this.
    Prefix(&'a str),
    /// No case-sensitive literal: the route is a candidate for every path.
    None,
}

/// Strips `?query` and `#fragment` the way Envoy's `removeQueryAndFragment` does.
pub(crate) fn path_without_query(path: &str) -> &str {
    path.find(['?', '#']).map_or(path, |i| &path[..i])
}

impl RouteMatcher {
    pub(crate) fn compile(m: &RouteMatch) -> Result<RouteMatcher, ConfigError> {
        reject_if(m.tls_context.is_some(), "tls_context")?;
        reject_if(!m.cookies.is_empty(), "cookies")?;
        reject_if(!m.dynamic_metadata.is_empty(), "dynamic_metadata")?;
        reject_if(!m.filter_state.is_empty(), "filter_state")?;
        let path = match &m.path_specifier {
            Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
            Some(PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
            Some(PathSpecifier::PathSeparatedPrefix(p)) => {
                // The proto's own pattern: `^[^?#]+[^?#/]$`.
                let ok = p.len() >= 2 && !p.contains(['?', '#']) && !p.ends_with('/');
                if !ok {
                    return Err(ConfigError::new(
                        "path_separated_prefix",
                        "must be at least two characters, contain no ? or #, and not end in /",
                    ));
                }
                PathMatch::SeparatedPrefix(p.clone())
            }
            Some(PathSpecifier::SafeRegex(r)) => {
                PathMatch::Regex(full_match_regex(r).map_err(|e| e.at("safe_regex"))?)
            }
            Some(PathSpecifier::ConnectMatcher(_)) => PathMatch::Connect,
            Some(PathSpecifier::PathMatchPolicy(_)) => {
                return Err(unsupported("path_match_policy"))
            }
            None => {
                return Err(ConfigError::new(
                    "",
                    "one of prefix, path, safe_regex or path_separated_prefix is required",
                ))
            }
        };
        let headers = m
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| HeaderMatcher::compile(h).map_err(|e| e.at(format!("headers[{i}]"))))
            .collect::<Result<_, _>>()?;
        let query_parameters = m
            .query_parameters
            .iter()
            .enumerate()
            .map(|(i, q)| {
                QueryParameterMatcher::compile(q)
                    .map_err(|e| e.at(format!("query_parameters[{i}]")))
            })
            .collect::<Result<_, _>>()?;
        let runtime_fraction = match &m.runtime_fraction {
            None => None,
            Some(rf) => {
                let pct = rf.default_value.as_ref().ok_or_else(|| {
                    ConfigError::new("runtime_fraction.default_value", "is required")
                })?;
                let denominator = match DenominatorType::try_from(pct.denominator) {
                    Ok(DenominatorType::Hundred) => 100,
                    Ok(DenominatorType::TenThousand) => 10_000,
                    Ok(DenominatorType::Million) => 1_000_000,
                    Err(_) => {
                        return Err(ConfigError::new(
                            "runtime_fraction.default_value.denominator",
                            format!("unknown denominator {}", pct.denominator),
                        ))
                    }
                };
                Some((u64::from(pct.numerator), denominator))
            }
        };
        Ok(RouteMatcher {
            path,
            case_sensitive: m.case_sensitive.unwrap_or(true),
            headers,
            query_parameters,
            grpc: m.grpc.is_some(),
            runtime_fraction,
        })
    }

    pub(crate) fn span(&self) -> MatchedSpan {
        match &self.path {
            PathMatch::Prefix(p) | PathMatch::Exact(p) | PathMatch::SeparatedPrefix(p) => {
                MatchedSpan::Len(p.len())
            }
            PathMatch::Regex(_) => MatchedSpan::PathWithoutQuery,
            PathMatch::Connect => MatchedSpan::Len(0),
        }
    }

    pub(crate) fn path_key(&self) -> PathKey<'_> {
        if !self.case_sensitive {
            return PathKey::None;
        }
        match &self.path {
            PathMatch::Exact(p) => PathKey::Exact(p),
            PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p) => PathKey::Prefix(p),
            PathMatch::Regex(_) | PathMatch::Connect => PathKey::None,
        }
    }

    pub(crate) fn matches(&self, req: &RequestView<'_>) -> bool {
        // Without a path only CONNECT matchers apply.
        let (Some(path), Some(path_only)) = (req.path, req.path_only) else {
            return matches!(self.path, PathMatch::Connect)
                && self.headers.iter().all(|h| h.matches(req));
        };
        if !self.path_matches(path_only) {
            return false;
        }
        if let Some((numerator, denominator)) = self.runtime_fraction {
            if req.random % denominator >= numerator {
                return false;
            }
        }
        if self.grpc && !is_grpc(req.parts) {
            return false;
        }
        if !self.headers.iter().all(|h| h.matches(req)) {
            return false;
        }
        self.query_parameters.iter().all(|q| q.matches(path))
    }

    fn path_matches(&self, path: &str) -> bool {
        let eq = |a: &str, b: &str| {
            if self.case_sensitive {
                a == b
            } else {
                a.eq_ignore_ascii_case(b)
            }
        };
        let starts = |p: &str| {
            path.len() >= p.len() && path.is_char_boundary(p.len()) && eq(&path[..p.len()], p)
        };
        match &self.path {
            PathMatch::Prefix(p) => starts(p),
            PathMatch::Exact(p) => eq(path, p),
            PathMatch::SeparatedPrefix(p) => {
                starts(p) && (path.len() == p.len() || path.as_bytes().get(p.len()) == Some(&b'/'))
            }
            PathMatch::Regex(r) => r.is_match(path.as_bytes()),
            PathMatch::Connect => false,
        }
    }
}

/// Envoy's `hasGrpcContentType`: exactly `application/grpc` or
/// `application/grpc+...`; `application/grpc-web` is not gRPC.
fn is_grpc(parts: &http::request::Parts) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    parts.headers.get(CONTENT_TYPE).is_some_and(|ct| {
        let ct = ct.as_bytes();
        ct.starts_with(GRPC) && matches!(ct.get(GRPC.len()), None | Some(b'+'))
    })
}

/// Where a header matcher reads from. `http::request::Parts` keeps
/// pseudo-headers outside the header map, so they are mapped back here;
/// `host` means `:authority`, as in Envoy, which stores Host there (verified).
/// Envoy always has a `:scheme`, even for HTTP/1.1; here it is the request
/// URI's scheme, so callers must set one for `:scheme` matchers to match.
#[derive(Debug)]
enum HeaderSource {
    Named(HeaderName),
    Authority,
    Method,
    Path,
    Scheme,
}

#[derive(Debug)]
enum HeaderTest {
    Present(bool),
    Value(StringMatcher),
    /// `[start, end)`, on values that parse as integers the way
    /// `absl::SimpleAtoi` does (surrounding whitespace and a sign allowed).
    Range(i64, i64),
}

#[derive(Debug)]
pub(crate) struct HeaderMatcher {
    source: HeaderSource,
    test: HeaderTest,
    invert: bool,
    treat_missing_as_empty: bool,
}

fn non_empty<'s>(field: &str, s: &'s str) -> Result<&'s str, ConfigError> {
    if s.is_empty() {
        Err(ConfigError::new(field, "must not be empty"))
    } else {
        Ok(s)
    }
}

impl HeaderMatcher {
    /// The deprecated `exact_match`, `prefix_match`, ... forms are still
    /// valid config and common in older control planes.
    #[allow(deprecated)]
    pub(crate) fn compile(h: &HeaderMatcherProto) -> Result<HeaderMatcher, ConfigError> {
        let name = h.name.to_ascii_lowercase();
        let source = match name.as_str() {
            "" => return Err(ConfigError::new("name", "must not be empty")),
            ":authority" | "host" => HeaderSource::Authority,
            ":method" => HeaderSource::Method,
            ":path" => HeaderSource::Path,
            ":scheme" => HeaderSource::Scheme,
            n if n.starts_with(':') => {
                return Err(ConfigError::new(
                    "name",
                    format!("pseudo-header {n} is not supported by trellis"),
                ))
            }
            n => HeaderSource::Named(
                HeaderName::from_bytes(n.as_bytes())
                    .map_err(|e| ConfigError::new("name", format!("invalid header name: {e}")))?,
            ),
        };
        use HeaderMatchSpecifier as S;
        let test = match &h.header_match_specifier {
            // Envoy treats a matcher without a specifier as "is present".
            None => HeaderTest::Present(true),
            Some(S::PresentMatch(p)) => HeaderTest::Present(*p),
            Some(S::ExactMatch(s)) => HeaderTest::Value(StringMatcher::exact(s)),
            Some(S::PrefixMatch(s)) => {
                HeaderTest::Value(StringMatcher::prefix(non_empty("prefix_match", s)?))
            }
            Some(S::SuffixMatch(s)) => {
                HeaderTest::Value(StringMatcher::suffix(non_empty("suffix_match", s)?))
            }
            Some(S::ContainsMatch(s)) => {
                HeaderTest::Value(StringMatcher::contains(non_empty("contains_match", s)?))
            }
            Some(S::SafeRegexMatch(r)) => HeaderTest::Value(StringMatcher::regex(
                full_match_regex(r).map_err(|e| e.at("safe_regex_match"))?,
            )),
            Some(S::StringMatch(m)) => {
                HeaderTest::Value(StringMatcher::compile(m).map_err(|e| e.at("string_match"))?)
            }
            Some(S::RangeMatch(r)) => HeaderTest::Range(r.start, r.end),
        };
        Ok(HeaderMatcher {
            source,
            test,
            invert: h.invert_match,
            treat_missing_as_empty: h.treat_missing_header_as_empty,
        })
    }

    /// Each value of a repeated header is tested on its own, any match
    /// counts, and `invert_match` applies to that result. Verified against
    /// Envoy 1.40: `x-h: a` + `x-h: b` matches exact `a` and exact `b` but
    /// not `a,b`, and does not match inverted exact `a`; a missing header
    /// fails every value matcher, inverted or not, unless
    /// `treat_missing_header_as_empty`; `present_match: false` matches a
    /// missing header and `treat_missing_header_as_empty` makes a missing
    /// header count as present.
    pub(crate) fn matches(&self, req: &RequestView<'_>) -> bool {
        if let HeaderTest::Present(want) = self.test {
            let present = self.any_value(req, |_| true).is_some() || self.treat_missing_as_empty;
            return (present == want) != self.invert;
        }
        let test = |v: &[u8]| match &self.test {
            HeaderTest::Value(m) => m.matches(v),
            HeaderTest::Range(start, end) => parse_int(v).is_some_and(|n| *start <= n && n < *end),
            HeaderTest::Present(_) => true,
        };
        match self.any_value(req, test) {
            Some(matched) => matched != self.invert,
            None if self.treat_missing_as_empty => test(b"") != self.invert,
            None => false,
        }
    }

    /// `None` when the header is absent, else whether any value passes `f`.
    fn any_value(&self, req: &RequestView<'_>, mut f: impl FnMut(&[u8]) -> bool) -> Option<bool> {
        let single = match &self.source {
            HeaderSource::Named(name) => {
                let mut values = req.parts.headers.get_all(name).iter().peekable();
                values.peek()?;
                return Some(values.any(|v| f(v.as_bytes())));
            }
            HeaderSource::Authority => req.host,
            HeaderSource::Method => req.parts.method.as_str(),
            HeaderSource::Path => req.path?,
            HeaderSource::Scheme => req.parts.uri.scheme_str()?,
        };
        Some(f(single.as_bytes()))
    }
}

fn parse_int(v: &[u8]) -> Option<i64> {
    std::str::from_utf8(v).ok()?.trim_ascii().parse().ok()
}

#[derive(Debug)]
struct QueryParameterMatcher {
    name: String,
    test: QueryTest,
}

#[derive(Debug)]
enum QueryTest {
    Present(bool),
    Value(StringMatcher),
}

impl QueryParameterMatcher {
    fn compile(q: &QueryParameterMatcherProto) -> Result<QueryParameterMatcher, ConfigError> {
        if q.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        let test = match &q.query_parameter_match_specifier {
            None => QueryTest::Present(true),
            Some(QueryParameterMatchSpecifier::PresentMatch(p)) => QueryTest::Present(*p),
            Some(QueryParameterMatchSpecifier::StringMatch(m)) => {
                QueryTest::Value(StringMatcher::compile(m).map_err(|e| e.at("string_match"))?)
            }
        };
        Ok(QueryParameterMatcher {
            name: q.name.clone(),
            test,
        })
    }

    /// Envoy looks only at the first occurrence, does not percent-decode,
    /// and reads a bare `?a` as `a=""` (all verified against Envoy 1.40).
    fn matches(&self, path: &str) -> bool {
        let value = first_query_value(path, &self.name);
        match &self.test {
            QueryTest::Present(want) => value.is_some() == *want,
            QueryTest::Value(m) => value.is_some_and(|v| m.matches(v.as_bytes())),
        }
    }
}

/// Envoy's `parseQueryString`: everything after the first `?`, split on `&`,
/// each split at its first `=`. Fragments are not stripped.
fn first_query_value<'p>(path: &'p str, name: &str) -> Option<&'p str> {
    let (_, query) = path.split_once('?')?;
    query
        .split('&')
        .find_map(|param| match param.split_once('=') {
            Some((n, v)) if n == name => Some(v),
            None if param == name => Some(""),
            _ => None,
        })
}
