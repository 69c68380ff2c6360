//! Header additions and removals at route configuration, virtual host and
//! route level (`*_headers_to_add` / `*_headers_to_remove`).

use http::header::{HeaderMap, HeaderName, HeaderValue};
use xds_protos::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValueOption,
};

use crate::config::ConfigError;
use crate::format::{Context, Format};

/// A header value: fixed text, or a format string evaluated per request.
#[derive(Debug)]
enum AddValue {
    Static(HeaderValue),
    Dynamic {
        format: Format,
        /// `keep_empty_value`: an empty rendering is still added.
        keep_empty: bool,
    },
}

#[derive(Debug)]
struct Add {
    name: HeaderName,
    value: AddValue,
    append: HeaderAppendAction,
}

/// Which map a mutation edits, so `%REQ(...)%` and `%RESP(...)%` read the
/// headers as they stand at that point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Request,
    Response,
}

/// One level's mutation of one header map, applied as Envoy's
/// `HeaderParser::evaluateHeaders` does: removals first, then every
/// condition is evaluated against the map as it is at that point, then all
/// overwrites, then all appends. So two `ADD_IF_ABSENT` entries for the same
/// absent header both get added, and an overwrite never clobbers an append
/// from the same level. Verified against Envoy 1.40; the observed response
/// is reproduced in `tests::header_mutations_across_levels_match_envoy`.
#[derive(Debug, Default)]
pub struct HeaderMutation {
    remove: Vec<HeaderName>,
    add: Vec<Add>,
}

impl HeaderMutation {
    /// `add_field`/`remove_field` name the proto fields, for error paths.
    pub(crate) fn compile(
        add: &[HeaderValueOption],
        add_field: &str,
        remove: &[String],
        remove_field: &str,
    ) -> Result<HeaderMutation, ConfigError> {
        let remove = remove
            .iter()
            .enumerate()
            .map(|(i, name)| modifiable(name).map_err(|e| e.at(format!("{remove_field}[{i}]"))))
            .collect::<Result<_, _>>()?;
        let add = add
            .iter()
            .enumerate()
            .filter_map(|(i, o)| {
                compile_add(o)
                    .map_err(|e| e.at(format!("{add_field}[{i}]")))
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        Ok(HeaderMutation { remove, add })
    }

    /// Whether any value reads the request's headers, so a response-phase
    /// caller knows to keep a copy of them.
    pub fn reads_request(&self) -> bool {
        self.add.iter().any(|a| match &a.value {
            AddValue::Dynamic { format, .. } => format.reads_request(),
            AddValue::Static(_) => false,
        })
    }

    /// `ctx` describes the request; `headers` is the map being edited, which
    /// operators of its own `phase` read in place of the context's copy.
    pub fn apply(&self, headers: &mut HeaderMap, ctx: &Context<'_>, phase: Phase) {
        if self.remove.is_empty() && self.add.is_empty() {
            return;
        }
        for name in &self.remove {
            headers.remove(name);
        }
        let mut ctx = *ctx;
        match phase {
            Phase::Request => {
                if let Some(r) = &mut ctx.request {
                    r.headers = headers;
                }
            }
            Phase::Response => ctx.response = Some(headers),
        }
        let decide = |a: &Add| match a.append {
            HeaderAppendAction::AppendIfExistsOrAdd => Some(false),
            HeaderAppendAction::AddIfAbsent => (!headers.contains_key(&a.name)).then_some(false),
            HeaderAppendAction::OverwriteIfExistsOrAdd => Some(true),
            HeaderAppendAction::OverwriteIfExists => headers.contains_key(&a.name).then_some(true),
        };
        // Every value is rendered before the map changes, as Envoy does.
        let decided: Vec<(&Add, HeaderValue, bool)> = self
            .add
            .iter()
            .filter_map(|a| {
                let overwrite = decide(a)?;
                let value = match &a.value {
                    AddValue::Static(v) => v.clone(),
                    AddValue::Dynamic { format, keep_empty } => {
                        let s = format.to_string(&ctx, true);
                        if s.is_empty() && !keep_empty {
                            return None;
                        }
                        HeaderValue::from_str(&s).ok()?
                    }
                };
                Some((a, value, overwrite))
            })
            .collect();
        // A map already at `http`'s size limit keeps what it has rather
        // than panicking on the request path.
        let (overwrites, appends): (Vec<_>, Vec<_>) = decided
            .into_iter()
            .partition(|(_, _, overwrite)| *overwrite);
        for (a, v, _) in overwrites {
            let _ = headers.try_insert(a.name.clone(), v);
        }
        for (a, v, _) in appends {
            let _ = headers.try_append(a.name.clone(), v);
        }
    }
}

/// Envoy refuses to add or remove pseudo-headers and `host`.
fn modifiable(name: &str) -> Result<HeaderName, ConfigError> {
    if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
        return Err(ConfigError::new(
            "",
            ":-prefixed or host headers may not be modified",
        ));
    }
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|e| ConfigError::new("", format!("invalid header name {name:?}: {e}")))
}

/// `Ok(None)` for an entry that can never take effect: an empty value without
/// `keep_empty_value` is skipped by Envoy, whatever its append action.
#[allow(deprecated)] // `append` is deprecated but still valid config.
fn compile_add(o: &HeaderValueOption) -> Result<Option<Add>, ConfigError> {
    let header = o
        .header
        .as_ref()
        .ok_or_else(|| ConfigError::new("header", "is required"))?;
    let name = modifiable(&header.key).map_err(|e| e.at("header.key"))?;
    let (raw, field) = match (header.value.is_empty(), header.raw_value.is_empty()) {
        (_, true) => (header.value.as_bytes(), "header.value"),
        (true, false) => (header.raw_value.as_slice(), "header.raw_value"),
        (false, false) => {
            return Err(ConfigError::new(
                "header",
                "only one of value or raw_value can be set",
            ))
        }
    };
    let text = std::str::from_utf8(raw)
        .map_err(|_| ConfigError::new(field, "header values with operators must be UTF-8"));
    let format = match &text {
        Ok(t) => Format::parse(t).map_err(|e| e.at(field))?,
        // Not UTF-8, so not a format string: bytes are sent as they are,
        // which Envoy allows only without a `%`.
        Err(e) if raw.contains(&b'%') => return Err(e.clone()),
        Err(_) => Format::parse("").map_err(|e| e.at(field))?,
    };
    let append = match (o.append, HeaderAppendAction::try_from(o.append_action)) {
        (Some(_), Ok(a)) if a != HeaderAppendAction::AppendIfExistsOrAdd => {
            return Err(ConfigError::new(
                "append",
                "both append and append_action are set and it's not allowed",
            ))
        }
        (Some(true), _) => HeaderAppendAction::AppendIfExistsOrAdd,
        (Some(false), _) => HeaderAppendAction::OverwriteIfExistsOrAdd,
        (None, Ok(action)) => action,
        (_, Err(_)) => {
            return Err(ConfigError::new(
                "append_action",
                format!("unknown append action {}", o.append_action),
            ))
        }
    };
    let value = match format.literal() {
        Some(_) if text.is_err() => AddValue::Static(
            HeaderValue::from_bytes(raw)
                .map_err(|e| ConfigError::new(field, format!("invalid header value: {e}")))?,
        ),
        Some("") if !o.keep_empty_value => return Ok(None),
        Some(lit) => AddValue::Static(
            HeaderValue::from_str(lit)
                .map_err(|e| ConfigError::new(field, format!("invalid header value: {e}")))?,
        ),
        None => AddValue::Dynamic {
            format,
            keep_empty: o.keep_empty_value,
        },
    };
    Ok(Some(Add {
        name,
        value,
        append,
    }))
}

#[cfg(test)]
#[allow(deprecated)] // `append` is still valid input.
mod tests {
    use super::*;
    use crate::format::{RequestHead, StreamInfo};
    use xds_protos::envoy::config::core::v3::HeaderValue as HeaderValueProto;

    pub(crate) fn opt(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(HeaderValueProto {
                key: key.into(),
                value: value.into(),
                raw_value: vec![],
            }),
            append: None,
            append_action: action as i32,
            keep_empty_value: false,
        }
    }

    fn values(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn append_actions_follow_envoy() {
        use HeaderAppendAction as A;
        let m = HeaderMutation::compile(
            &[
                opt("x-append", "1", A::AppendIfExistsOrAdd),
                opt("x-absent", "a", A::AddIfAbsent),
                opt("x-absent", "b", A::AddIfAbsent),
                opt("x-present", "no", A::AddIfAbsent),
                opt("x-over", "new", A::OverwriteIfExistsOrAdd),
                opt("x-if", "new", A::OverwriteIfExists),
                opt("x-if-missing", "new", A::OverwriteIfExists),
                opt("x-pct", "100%%", A::AppendIfExistsOrAdd),
                opt("x-empty", "", A::OverwriteIfExistsOrAdd),
            ],
            "request_headers_to_add",
            &["x-gone".into()],
            "request_headers_to_remove",
        )
        .unwrap();
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-append", "0"),
            ("x-present", "yes"),
            ("x-over", "old"),
            ("x-over", "old2"),
            ("x-if", "old"),
            ("x-gone", "1"),
            ("x-empty", "kept"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        m.apply(&mut h, &Context::new(&info()), Phase::Request);
        assert_eq!(values(&h, "x-append"), ["0", "1"]);
        assert_eq!(
            values(&h, "x-absent"),
            ["a", "b"],
            "both checked before either is added"
        );
        assert_eq!(values(&h, "x-present"), ["yes"]);
        assert_eq!(values(&h, "x-over"), ["new"]);
        assert_eq!(values(&h, "x-if"), ["new"]);
        assert!(h.get("x-if-missing").is_none());
        assert!(h.get("x-gone").is_none());
        assert_eq!(values(&h, "x-pct"), ["100%"]);
        assert_eq!(values(&h, "x-empty"), ["kept"], "empty values are skipped");
    }

    #[test]
    fn deprecated_append_and_keep_empty_value() {
        let mut o = opt("x-a", "v", HeaderAppendAction::AppendIfExistsOrAdd);
        o.append = Some(false);
        let mut e = opt("x-e", "", HeaderAppendAction::AppendIfExistsOrAdd);
        e.keep_empty_value = true;
        let m = HeaderMutation::compile(&[o, e], "a", &[], "r").unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("old"));
        m.apply(&mut h, &Context::new(&info()), Phase::Request);
        assert_eq!(values(&h, "x-a"), ["v"]);
        assert_eq!(values(&h, "x-e"), [""]);
    }

    #[test]
    fn errors_name_the_entry() {
        let mut both = opt("x-a", "v", HeaderAppendAction::AddIfAbsent);
        both.append = Some(true);
        let e = HeaderMutation::compile(
            &[opt("x", "1", HeaderAppendAction::AddIfAbsent), both],
            "request_headers_to_add",
            &[],
            "r",
        )
        .unwrap_err();
        assert_eq!(e.path, "request_headers_to_add[1].append");
        let e = HeaderMutation::compile(
            &[opt("Host", "x", HeaderAppendAction::AddIfAbsent)],
            "a",
            &[],
            "r",
        )
        .unwrap_err();
        assert_eq!(e.path, "a[0].header.key");
        let e = HeaderMutation::compile(
            &[],
            "a",
            &["ok".into(), ":path".into()],
            "response_headers_to_remove",
        )
        .unwrap_err();
        assert_eq!(e.path, "response_headers_to_remove[1]");
        let e = HeaderMutation::compile(
            &[opt(
                "x",
                "%NOT_AN_OPERATOR%",
                HeaderAppendAction::AddIfAbsent,
            )],
            "a",
            &[],
            "r",
        )
        .unwrap_err();
        assert_eq!(e.path, "a[0].header.value");
        assert!(e.reason.contains("NOT_AN_OPERATOR"), "{e}");
    }

    fn info() -> StreamInfo {
        StreamInfo::new("10.1.2.3:4567".parse().unwrap(), None)
    }

    #[test]
    fn operators_evaluate_per_request() {
        use HeaderAppendAction as A;
        let m = HeaderMutation::compile(
            &[
                opt(
                    "x-client-ip",
                    "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                    A::OverwriteIfExistsOrAdd,
                ),
                opt("x-copy", "id=%REQ(x-id)%", A::AppendIfExistsOrAdd),
                opt("x-missing", "%REQ(x-nope)%", A::AppendIfExistsOrAdd),
            ],
            "request_headers_to_add",
            &[],
            "r",
        )
        .unwrap();
        assert!(m.reads_request());
        let mut h = HeaderMap::new();
        h.insert("x-id", HeaderValue::from_static("7"));
        let method = http::Method::GET;
        let uri = http::Uri::from_static("/");
        let empty = HeaderMap::new();
        let i = info();
        let ctx = Context {
            info: &i,
            request: Some(RequestHead {
                method: &method,
                uri: &uri,
                scheme: "http",
                headers: &empty,
            }),
            response: None,
            trailers: None,
        };
        m.apply(&mut h, &ctx, Phase::Request);
        assert_eq!(values(&h, "x-client-ip"), ["10.1.2.3"]);
        assert_eq!(values(&h, "x-copy"), ["id=7"], "reads the map being edited");
        assert!(h.get("x-missing").is_none(), "an empty value is skipped");
    }
}
