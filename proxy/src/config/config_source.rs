//! The `ConfigSource` of a resource a listener or cluster names (RDS routes,
//! EDS endpoints): trellis fetches those over the ADS stream only, and
//! waits for them as long as the source's `initial_fetch_timeout` says.

use std::time::Duration;

use xds_protos::envoy::config::core::v3::{config_source::ConfigSourceSpecifier, ConfigSource};

use super::{duration, ConfigError};

/// Envoy's default for `initial_fetch_timeout`.
pub const DEFAULT_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// Checks that `c` (at `path`) is the ADS stream (`ads: {}`) and returns how long what it delivers is waited
/// for: `None` when `initial_fetch_timeout` is 0 (for ever). An absent
/// source means ADS with Envoy's default wait. Any other source (a file, a
/// gRPC service of its own) is refused by name rather than quietly read
/// from ADS.
pub fn ads(c: Option<&ConfigSource>, path: &str) -> Result<Option<Duration>, ConfigError> {
    let Some(c) = c else {
        return Ok(Some(DEFAULT_INITIAL_FETCH_TIMEOUT));
    };
    let field = match &c.config_source_specifier {
        Some(ConfigSourceSpecifier::Ads(_)) => None,
        Some(ConfigSourceSpecifier::PathConfigSource(_)) => Some("path_config_source"),
        Some(ConfigSourceSpecifier::ApiConfigSource(_)) => Some("api_config_source"),
        Some(ConfigSourceSpecifier::Self_(_)) => Some("self"),
        // The deprecated `path`, the one left.
        Some(_) => Some("path"),
        None => {
            return Err(ConfigError::new(
                path,
                "a config source is required; trellis takes `ads: {}`",
            ))
        }
    };
    if let Some(field) = field {
        return Err(ConfigError::new(
            format!("{path}.{field}"),
            "trellis fetches this over ADS only; use `ads: {}`",
        ));
    }
    duration::timeout(
        c.initial_fetch_timeout.as_ref(),
        Some(DEFAULT_INITIAL_FETCH_TIMEOUT),
        &format!("{path}.initial_fetch_timeout"),
    )
}

#[cfg(test)]
mod tests {
    use xds_protos::envoy::config::cluster::v3::{cluster, Cluster};
    use xds_protos::envoy::config::core::v3::{AggregatedConfigSource, PathConfigSource};
    use xds_protos::envoy::extensions::filters::network::http_connection_manager::v3::{
        http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager, HttpFilter,
        Rds,
    };

    use super::*;
    use crate::config::cluster::{ClusterConfig, Discovery};
    use crate::config::hcm::{HcmConfig, RouteSource};

    fn source(s: ConfigSourceSpecifier, timeout_s: Option<i64>) -> ConfigSource {
        ConfigSource {
            config_source_specifier: Some(s),
            initial_fetch_timeout: timeout_s
                .map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
            ..Default::default()
        }
    }

    fn file() -> ConfigSourceSpecifier {
        ConfigSourceSpecifier::PathConfigSource(PathConfigSource {
            path: "/etc/routes.yaml".into(),
            ..Default::default()
        })
    }

    fn hcm(s: ConfigSource) -> Result<HcmConfig, ConfigError> {
        HcmConfig::compile(&HttpConnectionManager {
            stat_prefix: "in".into(),
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                config_source: Some(s),
                route_config_name: "r".into(),
            })),
            http_filters: vec![HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(prost_types::Any {
                    type_url: "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                        .into(),
                    value: Vec::new(),
                })),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn eds(s: ConfigSource) -> Result<ClusterConfig, ConfigError> {
        ClusterConfig::compile(&Cluster {
            name: "c".into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cluster::EdsClusterConfig {
                eds_config: Some(s),
                service_name: String::new(),
            }),
            ..Default::default()
        })
    }

    #[test]
    fn a_file_source_is_refused_by_its_field() {
        let Err(e) = hcm(source(file(), None)) else {
            panic!("a file source for RDS is refused");
        };
        assert_eq!(e.path, "rds.config_source.path_config_source");
        let Err(e) = eds(source(file(), None)) else {
            panic!("a file source for EDS is refused");
        };
        assert_eq!(e.path, "eds_cluster_config.eds_config.path_config_source");
    }

    #[test]
    fn ads_carries_its_fetch_timeout() {
        let ads = ConfigSourceSpecifier::Ads(AggregatedConfigSource {});
        let h = hcm(source(ads.clone(), Some(2))).unwrap_or_else(|e| panic!("{e}"));
        let RouteSource::Rds(rds) = &h.routes else {
            panic!("routes over RDS");
        };
        assert_eq!(rds.initial_fetch_timeout, Some(Duration::from_secs(2)));
        let Ok(c) = eds(source(ads.clone(), None)) else {
            panic!("ads is taken");
        };
        let Discovery::Eds(e) = &c.discovery else {
            panic!("an EDS cluster");
        };
        assert_eq!(e.initial_fetch_timeout, Some(DEFAULT_INITIAL_FETCH_TIMEOUT));
        let Ok(c) = eds(source(ads, Some(0))) else {
            panic!("ads is taken");
        };
        assert!(matches!(&c.discovery, Discovery::Eds(e) if e.initial_fetch_timeout.is_none()));
    }
}
