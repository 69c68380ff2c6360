//! `dynamic_resources` of the bootstrap → [`AdsConfig`].

use std::sync::Arc;
use std::time::Duration;

use xds_protos::envoy::config::bootstrap::v3::bootstrap::DynamicResources;
use xds_protos::envoy::config::core::v3::{
    api_config_source::ApiType, config_source, grpc_service, ConfigSource,
};

use crate::config::config_source::DEFAULT_INITIAL_FETCH_TIMEOUT;
use crate::config::{duration, ConfigError};

#[derive(Debug, Clone)]
pub struct AdsConfig {
    /// The static cluster that reaches the management server.
    pub cluster: Arc<str>,
    pub delta: bool,
    pub lds: bool,
    pub cds: bool,
    /// How long the first CDS and LDS answers are waited for before the
    /// proxy goes LIVE without them (`None`: for ever).
    pub cds_fetch_timeout: Option<Duration>,
    pub lds_fetch_timeout: Option<Duration>,
    /// `grpc_services[0].initial_metadata`: sent on every stream (a node
    /// token for trellis-control, for instance).
    pub metadata: Vec<(
        tonic::metadata::AsciiMetadataKey,
        tonic::metadata::AsciiMetadataValue,
    )>,
}

impl AdsConfig {
    pub fn compile(d: &DynamicResources) -> Result<AdsConfig, ConfigError> {
        let Some(ads) = &d.ads_config else {
            return Err(ConfigError::new(
                "ads_config",
                "trellis needs ads_config: only aggregated (ADS) xDS is supported",
            ));
        };
        let delta = match ApiType::try_from(ads.api_type) {
            Ok(ApiType::Grpc | ApiType::AggregatedGrpc) => false,
            Ok(ApiType::DeltaGrpc | ApiType::AggregatedDeltaGrpc) => true,
            _ => {
                return Err(ConfigError::new(
                    "ads_config.api_type",
                    "only GRPC and DELTA_GRPC are supported by trellis",
                ))
            }
        };
        let mut metadata = Vec::new();
        if let Some(service) = ads.grpc_services.first() {
            for (i, h) in service.initial_metadata.iter().enumerate() {
                let path = format!("ads_config.grpc_services[0].initial_metadata[{i}]");
                let key = h.key.to_ascii_lowercase().parse().map_err(|_| {
                    ConfigError::new(format!("{path}.key"), "not a valid gRPC metadata key")
                })?;
                let value = h.value.parse().map_err(|_| {
                    ConfigError::new(format!("{path}.value"), "not a valid gRPC metadata value")
                })?;
                metadata.push((key, value));
            }
        }
        let cluster = match ads.grpc_services.as_slice() {
            [one] => match &one.target_specifier {
                Some(grpc_service::TargetSpecifier::EnvoyGrpc(g)) if !g.cluster_name.is_empty() => {
                    Arc::from(g.cluster_name.as_str())
                }
                Some(grpc_service::TargetSpecifier::GoogleGrpc(_)) => {
                    return Err(ConfigError::new(
                        "ads_config.grpc_services[0].google_grpc",
                        "google_grpc is not supported by trellis; use envoy_grpc",
                    ))
                }
                _ => {
                    return Err(ConfigError::new(
                        "ads_config.grpc_services[0].envoy_grpc.cluster_name",
                        "a cluster name is required",
                    ))
                }
            },
            _ => {
                return Err(ConfigError::new(
                    "ads_config.grpc_services",
                    "exactly one gRPC service is required",
                ))
            }
        };
        let lds = source_is_ads(d.lds_config.as_ref(), "lds_config")?;
        let cds = source_is_ads(d.cds_config.as_ref(), "cds_config")?;
        let timeout_of = |c: Option<&ConfigSource>, path: &str| {
            duration::timeout(
                c.and_then(|c| c.initial_fetch_timeout.as_ref()),
                Some(DEFAULT_INITIAL_FETCH_TIMEOUT),
                path,
            )
        };
        let cds_fetch_timeout =
            timeout_of(d.cds_config.as_ref(), "cds_config.initial_fetch_timeout")?;
        let lds_fetch_timeout =
            timeout_of(d.lds_config.as_ref(), "lds_config.initial_fetch_timeout")?;
        Ok(AdsConfig {
            metadata,
            cluster,
            delta,
            lds,
            cds,
            cds_fetch_timeout,
            lds_fetch_timeout,
        })
    }
}

fn source_is_ads(c: Option<&ConfigSource>, path: &str) -> Result<bool, ConfigError> {
    match c.and_then(|c| c.config_source_specifier.as_ref()) {
        None => Ok(false),
        Some(config_source::ConfigSourceSpecifier::Ads(_)) => Ok(true),
        Some(_) => Err(ConfigError::new(
            path,
            "only `ads: {}` config sources are supported by trellis",
        )),
    }
}
