//! `request_mirror_policies`: a fire-and-forget copy of the request to a
//! shadow cluster, with `-shadow` appended to the host. The copy runs in its
//! own task; whatever happens to it never touches the primary response.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body::Body as _;
use http_body_util::BodyExt;
use xds_protos::envoy::config::route::v3::route_action::RequestMirrorPolicy;

use super::{draw, per_million};
use crate::body::{self, Body};
use crate::config::ConfigError;
use crate::upstream::{ClusterMap, Protocol};

/// Bodies up to this size are copied; larger ones are not mirrored, so the
/// primary request never waits for a big body to be buffered.
const MIRROR_BUFFER_LIMIT: u64 = 64 * 1024;
/// A shadow request that takes longer is abandoned.
const SHADOW_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub struct Mirror {
    cluster: String,
    ppm: u32,
    suffix: bool,
}

impl Mirror {
    pub(crate) fn compile_all(list: &[RequestMirrorPolicy]) -> Result<Vec<Mirror>, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(i, m)| {
                let at = |f: &str| format!("request_mirror_policies[{i}].{f}");
                if m.cluster.is_empty() {
                    return Err(ConfigError::new(
                        at("cluster"),
                        "is required (cluster_header is not supported by trellis)",
                    ));
                }
                if !m.request_headers_mutations.is_empty() || !m.host_rewrite_literal.is_empty() {
                    return Err(ConfigError::new(
                        at("request_headers_mutations"),
                        "shadow request mutations are not supported by trellis",
                    ));
                }
                Ok(Mirror {
                    cluster: m.cluster.clone(),
                    ppm: per_million(
                        m.runtime_fraction
                            .as_ref()
                            .and_then(|f| f.default_value.as_ref()),
                        1_000_000,
                    ),
                    suffix: !m.disable_shadow_host_suffix_append,
                })
            })
            .collect()
    }
}

/// Sends shadow copies of the request (upstream form: path, headers) as the
/// policies say and returns the body for the primary request. Only bodies
/// that are empty or declared small are mirrored.
pub async fn tee(
    mirrors: &[Mirror],
    clusters: &ClusterMap,
    parts: &http::request::Parts,
    host: &str,
    body: Body,
) -> Body {
    let chosen: Vec<_> = mirrors
        .iter()
        .filter(|m| draw(m.ppm))
        .filter_map(|m| Some((m, clusters.get(&m.cluster)?.clone())))
        .collect();
    if chosen.is_empty() {
        return body;
    }
    let small = body
        .size_hint()
        .upper()
        .is_some_and(|n| n <= MIRROR_BUFFER_LIMIT);
    let (bytes, primary) = if body.is_end_stream() {
        (Bytes::new(), body)
    } else if small {
        match body.collect().await {
            Ok(c) => {
                let b = c.to_bytes();
                (b.clone(), body::full(b))
            }
            Err(e) => {
                let frames = futures::stream::once(async move {
                    Err::<http_body::Frame<Bytes>, crate::body::BoxError>(e)
                });
                return http_body_util::StreamBody::new(frames).boxed_unsync();
            }
        }
    } else {
        return body;
    };
    for (m, cluster) in chosen {
        let shadow_host = if m.suffix {
            shadow(host)
        } else {
            host.to_string()
        };
        let mut req = Request::new(if bytes.is_empty() {
            body::empty()
        } else {
            body::full(bytes.clone())
        });
        *req.method_mut() = parts.method.clone();
        *req.headers_mut() = parts.headers.clone();
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let proto = cluster.protocol(parts.version);
        match proto {
            Protocol::Http1 => {
                *req.version_mut() = http::Version::HTTP_11;
                *req.uri_mut() = match pq.parse() {
                    Ok(u) => u,
                    Err(_) => continue,
                };
                match HeaderValue::from_str(&shadow_host) {
                    Ok(v) => req.headers_mut().insert(http::header::HOST, v),
                    Err(_) => continue,
                };
            }
            Protocol::Http2 => {
                *req.version_mut() = http::Version::HTTP_2;
                req.headers_mut().remove(http::header::HOST);
                *req.uri_mut() = match format!("http://{shadow_host}{pq}").parse() {
                    Ok(u) => u,
                    Err(_) => continue,
                };
            }
        }
        tokio::spawn(send(cluster, proto, req));
    }
    primary
}

async fn send(cluster: Arc<crate::upstream::Cluster>, proto: Protocol, req: Request<Body>) {
    let work = async {
        let ep = cluster.pick(crate::rng::random())?;
        let _active = ep.track();
        let conn = ep.checkout(proto, &cluster.connect_params()).await.ok()?;
        let resp = conn.send(req).await.ok()?;
        cluster.stats.upstream_rq.record(resp.status().as_u16());
        let _ = resp.into_body().collect().await;
        Some(())
    };
    cluster.stats.upstream_rq_total.inc();
    let _ = tokio::time::timeout(SHADOW_TIMEOUT, work).await;
}

/// `foo.com:8080` → `foo.com-shadow:8080`, as Envoy names shadow hosts.
fn shadow(host: &str) -> String {
    match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(']') && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{name}-shadow:{port}")
        }
        Some((name, port)) if name.ends_with(']') => format!("{name}-shadow:{port}"),
        _ => format!("{host}-shadow"),
    }
}

#[cfg(test)]
mod tests {
    use super::shadow;

    #[test]
    fn shadow_host_names() {
        assert_eq!(shadow("foo.com"), "foo.com-shadow");
        assert_eq!(shadow("foo.com:8080"), "foo.com-shadow:8080");
    }
}
