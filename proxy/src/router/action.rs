//! What a matched route does: forward to a cluster, redirect, or answer
//! directly.

use std::time::Duration;

use bytes::Bytes;
use http::{header::HeaderName, StatusCode};
use xds_protos::envoy::config::core::v3::{data_source::Specifier, DataSource};
use xds_protos::envoy::config::route::v3::{
    route_action::{
        ClusterNotFoundResponseCode, ClusterSpecifier as ClusterSpecifierProto,
        HostRewriteSpecifier,
    },
    weighted_cluster::ClusterWeight as ClusterWeightProto,
    DirectResponseAction, RouteAction, WeightedCluster,
};

use super::convert::{opt_duration, reject_if, unsupported};
use super::hash::HashPolicies;
use super::matcher::MatchedSpan;
use super::redirect::Redirect;
use super::retry::RetryPolicy;
use super::rewrite::PathRewrite;
use super::HeaderMutations;
use crate::config::ConfigError;
use xds_protos::envoy::config::route::v3::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral;

#[derive(Debug)]
pub enum Action {
    Forward(Forward),
    Redirect(Redirect),
    DirectResponse(DirectResponse),
}

#[derive(Debug)]
pub enum ClusterSpecifier {
    Cluster(String),
    /// The cluster is named by this request header; a missing header or
    /// unknown cluster gets `cluster_not_found_status`.
    ClusterHeader(HeaderName),
    WeightedClusters(WeightedClusters),
}

#[derive(Debug)]
pub enum WeightedTarget {
    Cluster(String),
    ClusterHeader(HeaderName),
}

#[derive(Debug)]
pub struct ClusterWeight {
    pub target: WeightedTarget,
    pub weight: u32,
    /// Applied before the route's own mutations, as Envoy does.
    pub headers: HeaderMutations,
    pub host_rewrite: Option<String>,
}

/// Weights are relative to their sum. `total_weight` is deprecated and
/// Envoy 1.40 ignores it (verified: a `total_weight` of 100 with weights
/// 10 and 20 loads, and 600 requests split 198:402), so trellis ignores it
/// too.
#[derive(Debug)]
pub struct WeightedClusters {
    clusters: Vec<ClusterWeight>,
    /// Running sums of the weights, for a binary search in `pick`.
    ends: Vec<u64>,
}

impl WeightedClusters {
    fn compile(w: &WeightedCluster) -> Result<WeightedClusters, ConfigError> {
        reject_if(w.random_value_specifier.is_some(), "random_value_specifier")?;
        let clusters: Vec<ClusterWeight> = w
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| compile_weight(c).map_err(|e| e.at(format!("clusters[{i}]"))))
            .collect::<Result<_, _>>()?;
        let ends: Vec<u64> = clusters
            .iter()
            .scan(0u64, |sum, c| {
                *sum += u64::from(c.weight);
                Some(*sum)
            })
            .collect();
        if ends.last().is_none_or(|total| *total == 0) {
            return Err(ConfigError::new(
                "clusters",
                "sum of weights in the weighted_cluster must be greater than 0",
            ));
        }
        Ok(WeightedClusters { clusters, ends })
    }

    pub fn clusters(&self) -> &[ClusterWeight] {
        &self.clusters
    }

    /// Envoy's selection: `random % total` falls into the interval
    /// `[sum of earlier weights, that + weight)` of exactly one cluster.
    pub fn pick(&self, random: u64) -> &ClusterWeight {
        let total = self.ends.last().copied().unwrap_or(1).max(1);
        let selected = random % total;
        let i = self.ends.partition_point(|end| *end <= selected);
        &self.clusters[i.min(self.clusters.len() - 1)]
    }
}

fn compile_weight(c: &ClusterWeightProto) -> Result<ClusterWeight, ConfigError> {
    reject_if(c.metadata_match.is_some(), "metadata_match")?;
    let headers = HeaderMutations::compile(
        &c.request_headers_to_add,
        &c.request_headers_to_remove,
        &c.response_headers_to_add,
        &c.response_headers_to_remove,
    )?;
    let host_rewrite = match &c.host_rewrite_specifier {
        Some(HostRewriteLiteral(h)) if !h.is_empty() => Some(h.clone()),
        _ => None,
    };
    let target = match (c.name.is_empty(), c.cluster_header.is_empty()) {
        (false, true) => WeightedTarget::Cluster(c.name.clone()),
        (true, false) => {
            WeightedTarget::ClusterHeader(header_name("cluster_header", &c.cluster_header)?)
        }
        _ => {
            return Err(ConfigError::new(
                "name",
                "exactly one of name or cluster_header is required",
            ))
        }
    };
    let weight = c
        .weight
        .ok_or_else(|| ConfigError::new("weight", "is required"))?;
    Ok(ClusterWeight {
        target,
        weight,
        headers,
        host_rewrite,
    })
}

fn header_name(field: &str, name: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|e| ConfigError::new(field, format!("invalid header name {name:?}: {e}")))
}

#[derive(Debug)]
pub enum HostRewrite {
    Literal(String),
    /// Use the selected upstream host's hostname.
    Auto,
    /// Use this request header's value, when the request has it.
    Header(HeaderName),
}

#[derive(Debug)]
pub struct Forward {
    pub cluster: ClusterSpecifier,
    pub cluster_not_found_status: StatusCode,
    pub path_rewrite: Option<PathRewrite>,
    pub host_rewrite: Option<HostRewrite>,
    pub append_x_forwarded_host: bool,
    /// `None` means no timeout (`0s`); Envoy's default is 15 s.
    pub timeout: Option<Duration>,
    /// `None` when unset (the connection manager's stream idle timeout
    /// applies); `Some(ZERO)` disables it.
    pub idle_timeout: Option<Duration>,
    /// The route's policy, else the virtual host's.
    pub retry_policy: Option<RetryPolicy>,
    pub max_stream_duration: Option<Duration>,
    /// When set, a request's `grpc-timeout` is honoured, capped at this value
    /// (`ZERO` means uncapped); when unset `grpc-timeout` is ignored.
    pub grpc_timeout_header_max: Option<Duration>,
    pub grpc_timeout_header_offset: Option<Duration>,
    /// Hash policy and mirrors, boxed: most routes have neither.
    pub resilience: Box<RouteResilience>,
}

#[derive(Debug)]
pub struct RouteResilience {
    /// Keys for RING_HASH and MAGLEV clusters.
    pub hash_policy: HashPolicies,
    /// `request_mirror_policies`: shadow copies to other clusters.
    pub mirrors: Vec<crate::filters::mirror::Mirror>,
}

impl Forward {
    /// `vhost_retry` is the virtual host's policy, used when the route has
    /// none: Envoy does not merge the two.
    /// Deprecated fields are still read, to refuse them when set.
    #[allow(deprecated)]
    pub(crate) fn compile(
        a: &RouteAction,
        span: MatchedSpan,
        vhost_retry: Option<&RetryPolicy>,
    ) -> Result<Forward, ConfigError> {
        reject_if(a.metadata_match.is_some(), "metadata_match")?;
        reject_if(a.path_rewrite_policy.is_some(), "path_rewrite_policy")?;
        reject_if(!a.path_rewrite.is_empty(), "path_rewrite")?;
        reject_if(a.flush_timeout.is_some(), "flush_timeout")?;
        reject_if(a.early_data_policy.is_some(), "early_data_policy")?;
        reject_if(
            a.retry_policy_typed_config.is_some(),
            "retry_policy_typed_config",
        )?;
        reject_if(a.priority != 0, "priority")?;
        reject_if(a.cors.is_some(), "cors")?;
        reject_if(a.max_grpc_timeout.is_some(), "max_grpc_timeout")?;
        reject_if(a.grpc_timeout_offset.is_some(), "grpc_timeout_offset")?;
        // Only the explicit-proxy shape: terminate CONNECT and tunnel TCP.
        for (i, u) in a.upgrade_configs.iter().enumerate() {
            let plain_connect = u.upgrade_type.eq_ignore_ascii_case("CONNECT")
                && u.connect_config
                    .as_ref()
                    .is_none_or(|c| c.proxy_protocol_config.is_none() && !c.allow_post);
            reject_if(!plain_connect, &format!("upgrade_configs[{i}]"))?;
        }
        reject_if(
            a.internal_redirect_policy.is_some(),
            "internal_redirect_policy",
        )?;
        reject_if(a.internal_redirect_action != 0, "internal_redirect_action")?;
        reject_if(a.max_internal_redirects.is_some(), "max_internal_redirects")?;
        reject_if(a.hedge_policy.is_some(), "hedge_policy")?;
        let cluster = match &a.cluster_specifier {
            Some(ClusterSpecifierProto::Cluster(c)) if c.is_empty() => {
                return Err(ConfigError::new("cluster", "must not be empty"))
            }
            Some(ClusterSpecifierProto::Cluster(c)) => ClusterSpecifier::Cluster(c.clone()),
            Some(ClusterSpecifierProto::ClusterHeader(h)) => {
                ClusterSpecifier::ClusterHeader(header_name("cluster_header", h)?)
            }
            Some(ClusterSpecifierProto::WeightedClusters(w)) => ClusterSpecifier::WeightedClusters(
                WeightedClusters::compile(w).map_err(|e| e.at("weighted_clusters"))?,
            ),
            Some(ClusterSpecifierProto::ClusterSpecifierPlugin(_)) => {
                return Err(unsupported("cluster_specifier_plugin"))
            }
            Some(ClusterSpecifierProto::InlineClusterSpecifierPlugin(_)) => {
                return Err(unsupported("inline_cluster_specifier_plugin"))
            }
            None => {
                return Err(ConfigError::new(
                    "",
                    "one of cluster, cluster_header or weighted_clusters is required",
                ))
            }
        };
        let cluster_not_found_status =
            match ClusterNotFoundResponseCode::try_from(a.cluster_not_found_response_code) {
                Ok(ClusterNotFoundResponseCode::ServiceUnavailable) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                Ok(ClusterNotFoundResponseCode::NotFound) => StatusCode::NOT_FOUND,
                Ok(ClusterNotFoundResponseCode::InternalServerError) => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                Err(_) => {
                    return Err(ConfigError::new(
                        "cluster_not_found_response_code",
                        format!("unknown code {}", a.cluster_not_found_response_code),
                    ))
                }
            };
        let host_rewrite = match &a.host_rewrite_specifier {
            None | Some(HostRewriteSpecifier::AutoHostRewrite(false)) => None,
            Some(HostRewriteSpecifier::HostRewriteLiteral(h)) if h.is_empty() => None,
            Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => {
                Some(HostRewrite::Literal(h.clone()))
            }
            Some(HostRewriteSpecifier::AutoHostRewrite(true)) => Some(HostRewrite::Auto),
            Some(HostRewriteSpecifier::HostRewriteHeader(h)) => {
                Some(HostRewrite::Header(header_name("host_rewrite_header", h)?))
            }
            Some(HostRewriteSpecifier::HostRewritePathRegex(_)) => {
                return Err(unsupported("host_rewrite_path_regex"))
            }
            Some(HostRewriteSpecifier::HostRewrite(_)) => return Err(unsupported("host_rewrite")),
        };
        let timeout = match opt_duration("timeout", a.timeout.as_ref())? {
            None => Some(Duration::from_secs(15)),
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
        };
        let retry_policy = match &a.retry_policy {
            Some(p) => Some(RetryPolicy::compile(p).map_err(|e| e.at("retry_policy"))?),
            None => vhost_retry.cloned(),
        };
        let msd = a.max_stream_duration.as_ref();
        let msd_field = |name: &str, d: Option<&prost_types::Duration>| {
            opt_duration(name, d).map_err(|e| e.at("max_stream_duration"))
        };
        Ok(Forward {
            cluster,
            cluster_not_found_status,
            path_rewrite: PathRewrite::compile(&a.prefix_rewrite, a.regex_rewrite.as_ref(), span)?,
            host_rewrite,
            append_x_forwarded_host: a.append_x_forwarded_host,
            timeout,
            idle_timeout: opt_duration("idle_timeout", a.idle_timeout.as_ref())?,
            retry_policy,
            max_stream_duration: msd_field(
                "max_stream_duration",
                msd.and_then(|m| m.max_stream_duration.as_ref()),
            )?,
            grpc_timeout_header_max: msd_field(
                "grpc_timeout_header_max",
                msd.and_then(|m| m.grpc_timeout_header_max.as_ref()),
            )?,
            grpc_timeout_header_offset: msd_field(
                "grpc_timeout_header_offset",
                msd.and_then(|m| m.grpc_timeout_header_offset.as_ref()),
            )?,
            resilience: Box::new(RouteResilience {
                hash_policy: HashPolicies::compile(&a.hash_policy)?,
                mirrors: crate::filters::mirror::Mirror::compile_all(&a.request_mirror_policies)?,
            }),
        })
    }

    /// The upstream `:path`, or `None` when the route does not rewrite it.
    /// `path_and_query` must be the path the route matched.
    pub fn rewrite_path(&self, path_and_query: &str) -> Option<String> {
        self.path_rewrite.as_ref().map(|r| r.apply(path_and_query))
    }
}

#[derive(Debug)]
pub struct DirectResponse {
    pub status: StatusCode,
    pub body: Bytes,
}

impl DirectResponse {
    /// `filename` and `environment_variable` bodies are read here, once, so
    /// the request path does no I/O; `max_body` is the route configuration's
    /// `max_direct_response_body_size_bytes` (Envoy's default is 4096).
    pub(crate) fn compile(
        d: &DirectResponseAction,
        max_body: usize,
    ) -> Result<DirectResponse, ConfigError> {
        reject_if(d.body_format.is_some(), "body_format")?;
        let status = u16::try_from(d.status)
            .ok()
            .filter(|s| (200..600).contains(s))
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| {
                ConfigError::new("status", format!("{} is not in [200, 600)", d.status))
            })?;
        let body = match &d.body {
            None => Bytes::new(),
            Some(b) => read_data_source(b).map_err(|e| e.at("body"))?,
        };
        if body.len() > max_body {
            return Err(ConfigError::new(
                "body",
                format!(
                    "response body size is {} bytes; maximum is {max_body}",
                    body.len()
                ),
            ));
        }
        Ok(DirectResponse { status, body })
    }

    /// Envoy gives a 201 or 3xx direct response a `Location` naming the
    /// request's own URL (verified against Envoy 1.40: `direct_response:
    /// {status: 301}` for `Host: d:80`, `/d301?x=1` answers
    /// `location: http://d:80/d301?x=1`). Arguments as for
    /// [`Redirect::location`].
    pub fn location(&self, scheme: &str, host: &str, path_and_query: &str) -> Option<String> {
        let wants = self.status == StatusCode::CREATED || self.status.is_redirection();
        let slash = if path_and_query.starts_with('/') {
            ""
        } else {
            "/"
        };
        wants.then(|| format!("{scheme}://{host}{slash}{path_and_query}"))
    }
}

fn read_data_source(d: &DataSource) -> Result<Bytes, ConfigError> {
    reject_if(d.watched_directory.is_some(), "watched_directory")?;
    match &d.specifier {
        None => Ok(Bytes::new()),
        Some(Specifier::InlineString(s)) => Ok(Bytes::from(s.clone())),
        Some(Specifier::InlineBytes(b)) => Ok(Bytes::from(b.clone())),
        Some(Specifier::Filename(f)) => std::fs::read(f)
            .map(Bytes::from)
            .map_err(|e| ConfigError::new("filename", format!("cannot read {f}: {e}"))),
        Some(Specifier::EnvironmentVariable(v)) => std::env::var(v)
            .map(Bytes::from)
            .map_err(|e| ConfigError::new("environment_variable", format!("{v}: {e}"))),
    }
}

#[cfg(test)]
#[allow(deprecated)] // `total_weight` is still valid input.
mod tests {
    use super::*;

    fn weights(ws: &[u32]) -> WeightedClusters {
        WeightedClusters::compile(&WeightedCluster {
            clusters: ws
                .iter()
                .enumerate()
                .map(|(i, w)| ClusterWeightProto {
                    name: format!("c{i}"),
                    weight: Some(*w),
                    ..Default::default()
                })
                .collect(),
            total_weight: Some(100),
            ..Default::default()
        })
        .unwrap()
    }

    fn picked(w: &WeightedClusters, random: u64) -> &str {
        match &w.pick(random).target {
            WeightedTarget::Cluster(c) => c,
            WeightedTarget::ClusterHeader(_) => "header",
        }
    }

    #[test]
    fn pick_honours_weight_intervals_and_ignores_total_weight() {
        let w = weights(&[10, 0, 20]);
        assert_eq!(picked(&w, 0), "c0");
        assert_eq!(picked(&w, 9), "c0");
        assert_eq!(picked(&w, 10), "c2");
        assert_eq!(picked(&w, 29), "c2");
        assert_eq!(picked(&w, 30), "c0", "random is taken modulo the sum");
        assert_eq!(picked(&w, u64::MAX), picked(&w, u64::MAX % 30));
    }

    #[test]
    fn weighted_errors() {
        let e = WeightedClusters::compile(&WeightedCluster {
            clusters: vec![ClusterWeightProto {
                name: "a".into(),
                weight: Some(0),
                ..Default::default()
            }],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.path, "clusters");
        let e = WeightedClusters::compile(&WeightedCluster {
            clusters: vec![ClusterWeightProto {
                name: "a".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.path, "clusters[0].weight");
    }

    #[test]
    fn direct_response_bodies() {
        let path = std::env::temp_dir().join(format!("trellis-router-{}.txt", std::process::id()));
        std::fs::write(&path, "from file").unwrap();
        let d = DirectResponse::compile(
            &DirectResponseAction {
                status: 503,
                body: Some(DataSource {
                    specifier: Some(Specifier::Filename(path.display().to_string())),
                    ..Default::default()
                }),
                ..Default::default()
            },
            4096,
        )
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(d.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(d.body, "from file");
        assert_eq!(d.location("http", "d", "/x"), None);
        let big = DirectResponseAction {
            status: 200,
            body: Some(DataSource {
                specifier: Some(Specifier::InlineBytes(vec![b'a'; 5000])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = DirectResponse::compile(&big, 4096).unwrap_err();
        assert_eq!(
            e.to_string(),
            "body: response body size is 5000 bytes; maximum is 4096"
        );
        let moved = DirectResponse::compile(
            &DirectResponseAction {
                status: 301,
                ..Default::default()
            },
            0,
        )
        .unwrap();
        assert_eq!(
            moved.location("http", "d:80", "/d301?x=1").as_deref(),
            Some("http://d:80/d301?x=1")
        );
        let e = DirectResponse::compile(
            &DirectResponseAction {
                status: 600,
                ..Default::default()
            },
            10,
        )
        .unwrap_err();
        assert_eq!(e.path, "status");
    }
}
