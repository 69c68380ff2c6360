//! Request normalisation the connection manager applies before routing:
//! host port stripping and RFC 3986 path normalisation, as Envoy does them.

use crate::config::hcm::StripPort;

/// The host without its port, when the connection manager asks for that.
pub fn strip_port(host: &str, mode: StripPort, listener_port: u16) -> Option<&str> {
    if mode == StripPort::None {
        return None;
    }
    // `[v6]:port` keeps its brackets; a bare v6 address has no port to strip.
    let (name, port) = if host.starts_with('[') {
        let end = host.find(']')?;
        let rest = &host[end + 1..];
        (&host[..=end], rest.strip_prefix(':')?)
    } else {
        let (name, port) = host.rsplit_once(':')?;
        if name.contains(':') {
            return None;
        }
        (name, port)
    };
    let port: u16 = port.parse().ok()?;
    match mode {
        StripPort::Any => Some(name),
        StripPort::Matching if port == listener_port => Some(name),
        _ => None,
    }
}

/// The normalised `path?query`, or `None` when nothing changes. Only the
/// path is touched; the query is kept byte for byte.
pub fn path(path_and_query: &str, normalize: bool, merge_slashes: bool) -> Option<String> {
    let (path, query) = match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    };
    let mut p = path.to_string();
    if normalize {
        p = remove_dot_segments(&decode_dots(&p));
    }
    if merge_slashes {
        let mut merged = String::with_capacity(p.len());
        for c in p.chars() {
            if !(c == '/' && merged.ends_with('/')) {
                merged.push(c);
            }
        }
        p = merged;
    }
    (p != path).then(|| format!("{p}{query}"))
}

/// `%2e` and `%2E` are unreserved dots: decoded so `..` hidden by encoding
/// is removed like any other.
fn decode_dots(p: &str) -> String {
    p.replace("%2e", ".").replace("%2E", ".")
}

/// RFC 3986 section 5.2.4.
fn remove_dot_segments(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = p.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    if joined.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped_as_asked() {
        assert_eq!(
            strip_port("a.example:9090", StripPort::Any, 80),
            Some("a.example")
        );
        assert_eq!(strip_port("a.example:9090", StripPort::Matching, 80), None);
        assert_eq!(
            strip_port("a.example:80", StripPort::Matching, 80),
            Some("a.example")
        );
        assert_eq!(strip_port("[::1]:80", StripPort::Any, 1), Some("[::1]"));
        assert_eq!(strip_port("::1", StripPort::Any, 1), None);
        assert_eq!(strip_port("a.example", StripPort::Any, 1), None);
        assert_eq!(strip_port("a.example:80", StripPort::None, 80), None);
    }

    #[test]
    fn paths_normalise_like_envoy() {
        assert_eq!(
            path("/std/a/../b/./c", true, false).as_deref(),
            Some("/std/b/c")
        );
        assert_eq!(
            path("/std/a/%2e%2e/b", true, false).as_deref(),
            Some("/std/b")
        );
        assert_eq!(
            path("/std//x/../y?a=/../b", true, true).as_deref(),
            Some("/std/y?a=/../b")
        );
        assert_eq!(
            path("/std//a///b", false, true).as_deref(),
            Some("/std/a/b")
        );
        assert_eq!(path("/../..", true, false).as_deref(), Some("/"));
        assert_eq!(path("/a/b", true, true), None);
    }
}
