//! A listener's `listener_filters` and `use_original_dst`, compiled to the few
//! switches the accept path needs.

use xds_protos::envoy::config::listener::v3::{listener_filter, Listener};

use super::ConfigError;

pub(super) const ORIGINAL_DST: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst";
pub(super) const HTTP_INSPECTOR: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector";
/// Compiled by `listener::compile_listener_filters` with the TLS engine.
const TLS_INSPECTOR: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";

/// What runs on a connection before its filter chain is chosen.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ListenerFilters {
    /// `envoy.filters.listener.original_dst` (or `use_original_dst`): the
    /// destination iptables redirected away from becomes the connection's local
    /// address for chain matching and for `ORIGINAL_DST` clusters.
    pub original_dst: bool,
    /// `envoy.filters.listener.http_inspector`: sniff HTTP/1.x or h2c so chains
    /// can match `application_protocols`.
    pub http_inspector: bool,
}

impl ListenerFilters {
    pub fn compile(l: &Listener) -> Result<ListenerFilters, ConfigError> {
        // Envoy's use_original_dst hands the connection to the listener bound to
        // the original address; trellis restores the address on this listener,
        // which is what a sidecar with one catch-all listener per direction needs.
        let mut out = ListenerFilters {
            original_dst: l.use_original_dst == Some(true),
            http_inspector: false,
        };
        for (i, f) in l.listener_filters.iter().enumerate() {
            let path = format!("listener_filters[{i}]");
            let url = match &f.config_type {
                Some(listener_filter::ConfigType::TypedConfig(any)) => any.type_url.as_str(),
                _ => match f.name.as_str() {
                    "envoy.filters.listener.original_dst" => ORIGINAL_DST,
                    "envoy.filters.listener.http_inspector" => HTTP_INSPECTOR,
                    "envoy.filters.listener.tls_inspector" => TLS_INSPECTOR,
                    other => other,
                },
            };
            if f.filter_disabled.is_some() {
                return Err(ConfigError::new(
                    format!("{path}.filter_disabled"),
                    "is not supported by trellis",
                ));
            }
            match url {
                ORIGINAL_DST => out.original_dst = true,
                HTTP_INSPECTOR => out.http_inspector = true,
                TLS_INSPECTOR => {}
                other => {
                    return Err(ConfigError::new(
                        path,
                        format!("listener filter '{other}' is not supported by trellis yet"),
                    ))
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_protos::envoy::config::listener::v3::ListenerFilter;

    fn by_name(name: &str) -> ListenerFilter {
        ListenerFilter {
            name: name.to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn original_dst_and_http_inspector_compile() {
        let l = Listener {
            listener_filters: vec![
                by_name("envoy.filters.listener.original_dst"),
                by_name("envoy.filters.listener.http_inspector"),
            ],
            ..Default::default()
        };
        let f = ListenerFilters::compile(&l).expect("supported filters");
        assert!(f.original_dst && f.http_inspector);
        let l = Listener {
            use_original_dst: Some(true),
            ..Default::default()
        };
        assert!(ListenerFilters::compile(&l).expect("flag").original_dst);
    }

    #[test]
    fn other_listener_filters_are_named() {
        let l = Listener {
            listener_filters: vec![by_name("envoy.filters.listener.proxy_protocol")],
            ..Default::default()
        };
        let e = ListenerFilters::compile(&l).expect_err("unsupported");
        assert!(e.to_string().contains("proxy_protocol"), "{e}");
    }
}
