//! Path rewrites shared by forwarding routes and redirects: `prefix_rewrite`
//! and `regex_rewrite`.

use xds_protos::envoy::r#type::matcher::v3::RegexMatchAndSubstitute;

use super::matcher::{path_without_query, MatchedSpan};
use super::string::search_regex;
use crate::config::ConfigError;

#[derive(Debug)]
pub enum RewriteKind {
    /// Replaces the part of the path the route matched. Verified against
    /// Envoy 1.40: prefix `/p` + rewrite `/` turns `/pfoo?q=1` into
    /// `/foo?q=1`; case-insensitive prefix `/CI` + rewrite `/ci/` turns
    /// `/ci/x` into `/ci//x`; a `path` match is replaced whole and keeps
    /// the query; after a `safe_regex` match the whole query-less path is
    /// replaced and the query kept (`/rp/abc?a=1` → `/X?a=1`).
    Prefix(String),
    Regex(RegexRewrite),
}

/// Rewrites the query-less path, keeping the query, with `RE2::GlobalReplace`
/// semantics: every non-overlapping match, `\0`–`\9` for groups and `\\` for
/// a backslash. Verified against Envoy 1.40: `^/rx/(\w+)` → `/z/\1` turns
/// `/rx/abc/def?q=/rx/x` into `/z/abc/def?q=/rx/x`, `o` → `0` turns
/// `/ry/foo?o=o` into `/ry/f00?o=o`.
#[derive(Debug)]
pub struct RegexRewrite {
    pub pattern: regex::Regex,
    pub substitution: String,
    segments: Vec<Segment>,
}

#[derive(Debug)]
enum Segment {
    Literal(String),
    Group(usize),
}

#[derive(Debug)]
pub struct PathRewrite {
    kind: RewriteKind,
    span: MatchedSpan,
}

impl PathRewrite {
    /// Compiles the route's (or redirect's) `prefix_rewrite`/`regex_rewrite`
    /// pair; they are mutually exclusive, as in Envoy.
    pub(crate) fn compile(
        prefix_rewrite: &str,
        regex_rewrite: Option<&RegexMatchAndSubstitute>,
        span: MatchedSpan,
    ) -> Result<Option<PathRewrite>, ConfigError> {
        let kind = match (prefix_rewrite, regex_rewrite) {
            ("", None) => return Ok(None),
            (p, None) => RewriteKind::Prefix(p.to_owned()),
            ("", Some(r)) => {
                RewriteKind::Regex(RegexRewrite::compile(r).map_err(|e| e.at("regex_rewrite"))?)
            }
            (_, Some(_)) => {
                return Err(ConfigError::new(
                    "regex_rewrite",
                    "specify only one of prefix_rewrite or regex_rewrite",
                ))
            }
        };
        Ok(Some(PathRewrite { kind, span }))
    }

    pub fn kind(&self) -> &RewriteKind {
        &self.kind
    }

    /// `path_and_query` must be the path the route matched.
    pub fn apply(&self, path_and_query: &str) -> String {
        match &self.kind {
            RewriteKind::Prefix(prefix) => {
                let len = match self.span {
                    MatchedSpan::Len(n) => n,
                    MatchedSpan::PathWithoutQuery => path_without_query(path_and_query).len(),
                };
                format!("{prefix}{}", path_and_query.get(len..).unwrap_or(""))
            }
            RewriteKind::Regex(r) => {
                let path = path_without_query(path_and_query);
                let rest = &path_and_query[path.len()..];
                let replaced = r.pattern.replace_all(path, |caps: &regex::Captures<'_>| {
                    let mut out = String::new();
                    for s in &r.segments {
                        match s {
                            Segment::Literal(l) => out.push_str(l),
                            Segment::Group(g) => {
                                out.push_str(caps.get(*g).map_or("", |m| m.as_str()))
                            }
                        }
                    }
                    out
                });
                format!("{replaced}{rest}")
            }
        }
    }
}

impl RegexRewrite {
    /// RE2 accepts a substitution naming a group the pattern lacks (and Envoy
    /// loads it, verified), then fails every rewrite at request time; trellis
    /// refuses it up front, along with any `\` escape RE2 would reject.
    fn compile(r: &RegexMatchAndSubstitute) -> Result<RegexRewrite, ConfigError> {
        let pattern = r
            .pattern
            .as_ref()
            .ok_or_else(|| ConfigError::new("pattern", "is required"))?;
        let pattern = search_regex(pattern).map_err(|e| e.at("pattern"))?;
        let groups = pattern.captures_len();
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut chars = r.substitution.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                literal.push(c);
                continue;
            }
            match chars.next() {
                Some('\\') => literal.push('\\'),
                Some(d @ '0'..='9') => {
                    let g = d as usize - '0' as usize;
                    if g >= groups {
                        return Err(ConfigError::new(
                            "substitution",
                            format!("\\{g} refers to a group the pattern does not have"),
                        ));
                    }
                    if !literal.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut literal)));
                    }
                    segments.push(Segment::Group(g));
                }
                other => {
                    return Err(ConfigError::new(
                        "substitution",
                        format!(
                            "invalid escape \\{}; use \\0-\\9 or \\\\",
                            other.map(String::from).unwrap_or_default()
                        ),
                    ))
                }
            }
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(RegexRewrite {
            pattern,
            substitution: r.substitution.clone(),
            segments,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_protos::envoy::r#type::matcher::v3::RegexMatcher;

    fn regex(pattern: &str, substitution: &str) -> Result<Option<PathRewrite>, ConfigError> {
        let r = RegexMatchAndSubstitute {
            pattern: Some(RegexMatcher {
                regex: pattern.into(),
                engine_type: None,
            }),
            substitution: substitution.into(),
        };
        PathRewrite::compile("", Some(&r), MatchedSpan::Len(0))
    }

    #[test]
    fn prefix_replaces_the_matched_span() {
        let p = PathRewrite::compile("/", None, MatchedSpan::Len(2))
            .unwrap()
            .unwrap();
        assert_eq!(p.apply("/pfoo?q=1"), "/foo?q=1");
        let p = PathRewrite::compile("/", None, MatchedSpan::Len(3))
            .unwrap()
            .unwrap();
        assert_eq!(p.apply("/p/foo"), "/foo");
        let p = PathRewrite::compile("/X", None, MatchedSpan::PathWithoutQuery)
            .unwrap()
            .unwrap();
        assert_eq!(p.apply("/rp/abc?a=1"), "/X?a=1");
        let p = PathRewrite::compile("/X", None, MatchedSpan::Len(99))
            .unwrap()
            .unwrap();
        assert_eq!(p.apply("/short"), "/X", "a mismatched span must not panic");
    }

    #[test]
    fn regex_keeps_the_query_and_expands_groups() {
        let p = regex(r"^/rx/(\w+)", r"/z/\1").unwrap().unwrap();
        assert_eq!(p.apply("/rx/abc/def?q=/rx/x"), "/z/abc/def?q=/rx/x");
        let p = regex("o", "0").unwrap().unwrap();
        assert_eq!(p.apply("/ry/foo?o=o"), "/ry/f00?o=o");
        let p = regex("^/rb/(.*)$", r"/\\\1\0").unwrap().unwrap();
        assert_eq!(p.apply("/rb/q?x=1"), r"/\q/rb/q?x=1");
    }

    #[test]
    fn errors() {
        assert_eq!(
            regex("(a)", r"\3").unwrap_err().path,
            "regex_rewrite.substitution"
        );
        assert_eq!(
            regex("(a)", r"\q").unwrap_err().path,
            "regex_rewrite.substitution"
        );
        assert_eq!(
            regex("[a", "x").unwrap_err().path,
            "regex_rewrite.pattern.regex"
        );
        let r = RegexMatchAndSubstitute::default();
        let e = PathRewrite::compile("/x", Some(&r), MatchedSpan::Len(0)).unwrap_err();
        assert_eq!(e.path, "regex_rewrite");
    }
}
