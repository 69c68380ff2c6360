//! `RedirectAction`: builds the `Location` of a redirect the way Envoy's
//! `RouteEntryImplBase::newUri` does.

use http::StatusCode;
use xds_protos::envoy::config::route::v3::{
    redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier},
    RedirectAction,
};

use super::convert::unsupported;
use super::matcher::MatchedSpan;
use super::rewrite::PathRewrite;
use crate::config::ConfigError;

#[derive(Debug)]
enum RedirectPath {
    Keep,
    /// `path_redirect`; a query in it replaces the request's and survives
    /// `strip_query`.
    Replace {
        path: String,
        has_query: bool,
    },
    Rewrite(PathRewrite),
}

/// Verified against Envoy 1.40 (request → `Location`):
/// - `https_redirect`: `redir:80` → `https://redir/…`, `redir:8080` →
///   `https://redir:8080/…`, `[::1]:80` → `https://[::1]/…`; the request's
///   port is dropped only when the scheme changes away from its default port
///   or a `port_redirect` is set (`redir` → `http://redir:9000/…`).
/// - `scheme_redirect: http` with request scheme `https` and `redir:443` →
///   `http://redir/…`; with request scheme `http`, `redir:443` is kept.
/// - `host_redirect: other` + `port_redirect: 9000` → `http://other:9000/…`;
///   `host_redirect` alone drops the request's port.
/// - `path_redirect: /new` keeps the query; `/new?z=1` replaces it even with
///   `strip_query`; `nosl` becomes `/nosl`.
/// - `prefix_rewrite`/`regex_rewrite` behave as for forwarding routes.
#[derive(Debug)]
pub struct Redirect {
    scheme: Option<String>,
    host: Option<String>,
    /// `:port`, or empty.
    port: String,
    path: RedirectPath,
    strip_query: bool,
    pub status: StatusCode,
}

impl Redirect {
    pub(crate) fn compile(r: &RedirectAction, span: MatchedSpan) -> Result<Redirect, ConfigError> {
        let scheme = match &r.scheme_rewrite_specifier {
            None | Some(SchemeRewriteSpecifier::HttpsRedirect(false)) => None,
            Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".to_owned()),
            Some(SchemeRewriteSpecifier::SchemeRedirect(s)) if s.is_empty() => None,
            Some(SchemeRewriteSpecifier::SchemeRedirect(s)) => Some(s.to_ascii_lowercase()),
        };
        let path = match &r.path_rewrite_specifier {
            None => RedirectPath::Keep,
            Some(PathRewriteSpecifier::PathRedirect(p)) if p.is_empty() => RedirectPath::Keep,
            Some(PathRewriteSpecifier::PathRedirect(p)) => RedirectPath::Replace {
                path: p.clone(),
                has_query: p.contains('?'),
            },
            Some(PathRewriteSpecifier::PrefixRewrite(p)) => PathRewrite::compile(p, None, span)?
                .map_or(RedirectPath::Keep, RedirectPath::Rewrite),
            Some(PathRewriteSpecifier::RegexRewrite(re)) => {
                PathRewrite::compile("", Some(re), span)?
                    .map_or(RedirectPath::Keep, RedirectPath::Rewrite)
            }
            Some(PathRewriteSpecifier::PathRewrite(_)) => return Err(unsupported("path_rewrite")),
        };
        let status = match RedirectResponseCode::try_from(r.response_code) {
            Ok(RedirectResponseCode::MovedPermanently) => StatusCode::MOVED_PERMANENTLY,
            Ok(RedirectResponseCode::Found) => StatusCode::FOUND,
            Ok(RedirectResponseCode::SeeOther) => StatusCode::SEE_OTHER,
            Ok(RedirectResponseCode::TemporaryRedirect) => StatusCode::TEMPORARY_REDIRECT,
            Ok(RedirectResponseCode::PermanentRedirect) => StatusCode::PERMANENT_REDIRECT,
            Err(_) => {
                return Err(ConfigError::new(
                    "response_code",
                    format!("unknown response code {}", r.response_code),
                ))
            }
        };
        Ok(Redirect {
            scheme,
            host: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
            port: if r.port_redirect == 0 {
                String::new()
            } else {
                format!(":{}", r.port_redirect)
            },
            path,
            strip_query: r.strip_query,
            status,
        })
    }

    /// `scheme` is the request's (`x-forwarded-proto` in Envoy), `host` its
    /// authority, `path_and_query` the path the route matched.
    pub fn location(&self, scheme: &str, host: &str, path_and_query: &str) -> (StatusCode, String) {
        let final_scheme = self.scheme.as_deref().unwrap_or(scheme);
        let final_host = match &self.host {
            Some(h) => h.as_str(),
            None => request_host(host, scheme, final_scheme, !self.port.is_empty()),
        };
        let rewritten;
        let (mut path, keep_query) = match &self.path {
            RedirectPath::Keep => (path_and_query, false),
            RedirectPath::Rewrite(r) => {
                rewritten = r.apply(path_and_query);
                (rewritten.as_str(), false)
            }
            RedirectPath::Replace {
                path,
                has_query: true,
            } => (path.as_str(), true),
            RedirectPath::Replace {
                path,
                has_query: false,
            } => {
                rewritten = match path_and_query.find('?') {
                    Some(q) => format!("{path}{}", &path_and_query[q..]),
                    None => path.clone(),
                };
                (rewritten.as_str(), false)
            }
        };
        if self.strip_query && !keep_query {
            path = path.split_once('?').map_or(path, |(p, _)| p);
        }
        let slash = if path.starts_with('/') { "" } else { "/" };
        let location = format!("{final_scheme}://{final_host}{}{slash}{path}", self.port);
        (self.status, location)
    }
}

/// Envoy's `processRequestHost`: drop the request's port when a new port is
/// set, or when the scheme changes and the port was the old scheme's default.
fn request_host<'h>(host: &'h str, scheme: &str, new_scheme: &str, new_port: bool) -> &'h str {
    let port_start = if host.starts_with('[') {
        host.rfind("]:").map(|i| i + 1)
    } else {
        host.rfind(':')
    };
    let Some(i) = port_start else { return host };
    let port = &host[i..];
    let default_port = (scheme == "https" && port == ":443") || (scheme == "http" && port == ":80");
    if new_port || (new_scheme != scheme && default_port) {
        &host[..i]
    } else {
        host
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(f: impl FnOnce(&mut RedirectAction)) -> Redirect {
        let mut r = RedirectAction::default();
        f(&mut r);
        Redirect::compile(&r, MatchedSpan::Len(4)).unwrap()
    }

    fn loc(r: &Redirect, scheme: &str, host: &str, path: &str) -> String {
        r.location(scheme, host, path).1
    }

    #[test]
    fn scheme_and_port_handling_matches_envoy() {
        let https = redirect(|r| {
            r.scheme_rewrite_specifier = Some(SchemeRewriteSpecifier::HttpsRedirect(true))
        });
        assert_eq!(
            https.location("http", "redir", "/https?a=1"),
            (
                StatusCode::MOVED_PERMANENTLY,
                "https://redir/https?a=1".into()
            )
        );
        assert_eq!(loc(&https, "http", "redir:80", "/x"), "https://redir/x");
        assert_eq!(
            loc(&https, "http", "redir:8080", "/x"),
            "https://redir:8080/x"
        );
        assert_eq!(
            loc(&https, "https", "redir:443", "/x"),
            "https://redir:443/x"
        );
        assert_eq!(loc(&https, "http", "[::1]:80", "/x"), "https://[::1]/x");
        assert_eq!(loc(&https, "http", "[::1]", "/x"), "https://[::1]/x");
        let http = redirect(|r| {
            r.scheme_rewrite_specifier = Some(SchemeRewriteSpecifier::SchemeRedirect("http".into()))
        });
        assert_eq!(loc(&http, "https", "redir:443", "/x"), "http://redir/x");
        assert_eq!(loc(&http, "http", "redir:443", "/x"), "http://redir:443/x");
        let port = redirect(|r| r.port_redirect = 9000);
        assert_eq!(
            loc(&port, "http", "redir:8080", "/p?a=1"),
            "http://redir:9000/p?a=1"
        );
        assert_eq!(loc(&port, "http", "[::1]:80", "/p"), "http://[::1]:9000/p");
        let host_port = redirect(|r| {
            r.host_redirect = "other".into();
            r.port_redirect = 9000;
        });
        assert_eq!(
            loc(&host_port, "http", "redir:8080", "/h?a=1"),
            "http://other:9000/h?a=1"
        );
        let host = redirect(|r| r.host_redirect = "other".into());
        assert_eq!(loc(&host, "http", "redir:8080", "/h"), "http://other/h");
    }

    #[test]
    fn paths_and_queries() {
        let path = redirect(|r| {
            r.path_rewrite_specifier = Some(PathRewriteSpecifier::PathRedirect("/new".into()))
        });
        assert_eq!(loc(&path, "http", "r", "/path?a=1"), "http://r/new?a=1");
        let pathq = redirect(|r| {
            r.path_rewrite_specifier = Some(PathRewriteSpecifier::PathRedirect("/new?z=1".into()));
            r.strip_query = true;
        });
        assert_eq!(loc(&pathq, "http", "r", "/pathq?a=1"), "http://r/new?z=1");
        let nosl = redirect(|r| {
            r.path_rewrite_specifier = Some(PathRewriteSpecifier::PathRedirect("nosl".into()))
        });
        assert_eq!(loc(&nosl, "http", "r", "/x?a=1"), "http://r/nosl?a=1");
        let strip = redirect(|r| {
            r.strip_query = true;
            r.response_code = RedirectResponseCode::TemporaryRedirect as i32;
        });
        assert_eq!(
            strip.location("http", "r", "/strip?a=1"),
            (StatusCode::TEMPORARY_REDIRECT, "http://r/strip".into())
        );
        let prefix = redirect(|r| {
            r.path_rewrite_specifier = Some(PathRewriteSpecifier::PrefixRewrite("/".into()))
        });
        assert_eq!(
            loc(&prefix, "http", "r", "/pre/foo?a=1"),
            "http://r//foo?a=1"
        );
        assert_eq!(loc(&prefix, "http", "r", "/prefoo?a=1"), "http://r/foo?a=1");
        let scheme = redirect(|r| {
            r.scheme_rewrite_specifier = Some(SchemeRewriteSpecifier::SchemeRedirect("ftp".into()))
        });
        assert_eq!(loc(&scheme, "http", "r", "/s"), "ftp://r/s");
    }

    #[test]
    fn unknown_response_code_is_an_error() {
        let r = RedirectAction {
            response_code: 42,
            ..Default::default()
        };
        assert_eq!(
            Redirect::compile(&r, MatchedSpan::Len(0)).unwrap_err().path,
            "response_code"
        );
    }
}
