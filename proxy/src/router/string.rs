//! `envoy.type.matcher.v3.StringMatcher` and `RegexMatcher`, shared by the
//! path, header and query-parameter matchers.

use xds_protos::envoy::r#type::matcher::v3::{
    regex_matcher::EngineType, string_matcher::MatchPattern, RegexMatcher,
    StringMatcher as StringMatcherProto,
};

use super::convert::unsupported;
use crate::config::ConfigError;

/// Compiles an RE2 pattern for full-string matching, as Envoy's `safe_regex`
/// always anchors. The raw pattern is parsed on its own first so that input
/// like `a)|(b` is rejected instead of becoming valid once wrapped.
///
/// The `regex` crate is RE2-compatible in syntax and linear-time, with one
/// known difference: `\d`, `\w`, `\s` and `\b` are Unicode-aware here and
/// ASCII-only in RE2. Envoy's RE2 program-size limit is not enforced.
pub(crate) fn full_match_regex(m: &RegexMatcher) -> Result<regex::bytes::Regex, ConfigError> {
    check_regex_matcher(m)?;
    regex::bytes::Regex::new(&format!(r"\A(?:{})\z", m.regex))
        .map_err(|e| ConfigError::new("regex", format!("invalid regex: {e}")))
}

/// Compiles an RE2 pattern unanchored, for `regex_rewrite`, which replaces
/// every match the way `RE2::GlobalReplace` does.
pub(crate) fn search_regex(m: &RegexMatcher) -> Result<regex::Regex, ConfigError> {
    check_regex_matcher(m)?;
    regex::Regex::new(&m.regex)
        .map_err(|e| ConfigError::new("regex", format!("invalid regex: {e}")))
}

/// `google_re2` is deprecated but still valid; it names the only engine.
#[allow(deprecated)]
fn check_regex_matcher(m: &RegexMatcher) -> Result<(), ConfigError> {
    if let Some(EngineType::GoogleRe2(re2)) = &m.engine_type {
        if re2.max_program_size.is_some() {
            return Err(unsupported("google_re2.max_program_size"));
        }
    }
    if m.regex.is_empty() {
        return Err(ConfigError::new("regex", "must not be empty"));
    }
    regex::Regex::new(&m.regex)
        .map(drop)
        .map_err(|e| ConfigError::new("regex", format!("invalid regex: {e}")))
}

#[derive(Debug)]
enum Pattern {
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
    Suffix(Vec<u8>),
    Contains(Vec<u8>),
    Regex(regex::bytes::Regex),
}

/// A compiled string matcher. `ignore_case` folds ASCII only, like Envoy's
/// `absl::EqualsIgnoreCase`, and has no effect on regexes.
#[derive(Debug)]
pub(crate) struct StringMatcher {
    pattern: Pattern,
    ignore_case: bool,
}

impl StringMatcher {
    pub(crate) fn compile(m: &StringMatcherProto) -> Result<StringMatcher, ConfigError> {
        let non_empty = |field: &str, s: &str| {
            if s.is_empty() {
                Err(ConfigError::new(field, "must not be empty"))
            } else {
                Ok(s.as_bytes().to_vec())
            }
        };
        let pattern = match &m.match_pattern {
            Some(MatchPattern::Exact(s)) => Pattern::Exact(s.as_bytes().to_vec()),
            Some(MatchPattern::Prefix(s)) => Pattern::Prefix(non_empty("prefix", s)?),
            Some(MatchPattern::Suffix(s)) => Pattern::Suffix(non_empty("suffix", s)?),
            Some(MatchPattern::Contains(s)) => Pattern::Contains(non_empty("contains", s)?),
            Some(MatchPattern::SafeRegex(r)) => {
                Pattern::Regex(full_match_regex(r).map_err(|e| e.at("safe_regex"))?)
            }
            Some(MatchPattern::Custom(_)) => return Err(unsupported("custom")),
            None => {
                return Err(ConfigError::new(
                    "",
                    "one of exact, prefix, suffix, contains or safe_regex is required",
                ))
            }
        };
        Ok(StringMatcher::new(pattern, m.ignore_case))
    }

    pub(crate) fn exact(s: &str) -> StringMatcher {
        StringMatcher::new(Pattern::Exact(s.as_bytes().to_vec()), false)
    }
    pub(crate) fn prefix(s: &str) -> StringMatcher {
        StringMatcher::new(Pattern::Prefix(s.as_bytes().to_vec()), false)
    }
    pub(crate) fn suffix(s: &str) -> StringMatcher {
        StringMatcher::new(Pattern::Suffix(s.as_bytes().to_vec()), false)
    }
    pub(crate) fn contains(s: &str) -> StringMatcher {
        StringMatcher::new(Pattern::Contains(s.as_bytes().to_vec()), false)
    }
    pub(crate) fn regex(r: regex::bytes::Regex) -> StringMatcher {
        StringMatcher::new(Pattern::Regex(r), false)
    }

    fn new(pattern: Pattern, ignore_case: bool) -> StringMatcher {
        let pattern = match pattern {
            Pattern::Contains(c) if ignore_case => Pattern::Contains(c.to_ascii_lowercase()),
            p => p,
        };
        StringMatcher {
            pattern,
            ignore_case,
        }
    }

    pub(crate) fn matches(&self, v: &[u8]) -> bool {
        let eq = |a: &[u8], b: &[u8]| {
            if self.ignore_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match &self.pattern {
            Pattern::Exact(p) => eq(v, p),
            Pattern::Prefix(p) => v.len() >= p.len() && eq(&v[..p.len()], p),
            Pattern::Suffix(p) => v.len() >= p.len() && eq(&v[v.len() - p.len()..], p),
            Pattern::Contains(p) if self.ignore_case => contains(&v.to_ascii_lowercase(), p),
            Pattern::Contains(p) => contains(v, p),
            Pattern::Regex(r) => r.is_match(v),
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sm(p: MatchPattern, ignore_case: bool) -> StringMatcher {
        StringMatcher::compile(&StringMatcherProto {
            ignore_case,
            match_pattern: Some(p),
        })
        .unwrap()
    }

    #[test]
    fn kinds_and_ignore_case() {
        assert!(sm(MatchPattern::Exact("Ab".into()), true).matches(b"aB"));
        assert!(!sm(MatchPattern::Exact("Ab".into()), false).matches(b"aB"));
        assert!(sm(MatchPattern::Prefix("Ab".into()), true).matches(b"aBc"));
        assert!(sm(MatchPattern::Suffix("Bc".into()), true).matches(b"abC"));
        assert!(sm(MatchPattern::Contains("B".into()), true).matches(b"abc"));
        assert!(!sm(MatchPattern::Contains("B".into()), false).matches(b"abc"));
        let re = sm(
            MatchPattern::SafeRegex(RegexMatcher {
                regex: "a+".into(),
                engine_type: None,
            }),
            true,
        );
        assert!(re.matches(b"aaa"));
        assert!(!re.matches(b"aaab"), "full match, not search");
        assert!(!re.matches(b"AAA"), "ignore_case does not apply to regex");
    }

    #[test]
    fn wrapped_pattern_cannot_change_meaning() {
        let e = full_match_regex(&RegexMatcher {
            regex: "a)|(b".into(),
            engine_type: None,
        })
        .unwrap_err();
        assert_eq!(e.path, "regex");
        assert!(e.reason.starts_with("invalid regex"));
    }

    #[test]
    fn empty_prefix_is_rejected() {
        let e = StringMatcher::compile(&StringMatcherProto {
            ignore_case: false,
            match_pattern: Some(MatchPattern::Prefix(String::new())),
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "prefix: must not be empty");
    }
}
