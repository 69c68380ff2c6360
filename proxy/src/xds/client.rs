//! The stream to the management server: connect, subscribe, ACK/NACK,
//! reconnect with backoff, re-subscribing with the versions held.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Mutex};
use tokio_stream::wrappers::ReceiverStream;
use xds_protos::envoy::config::core::v3::Node;
use xds_protos::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use xds_protos::google::rpc::Status;

use super::apply::{apply, claim_addresses, HeldListeners, Statics, Warming};
use super::resources::{rds_by_prefix, Kind, Resources, Update};
use super::stats::{register, version_hash, RdsScope, TypeStats, XdsStats};
use super::AdsConfig;
use crate::shared::Shared;
use crate::tls::{AlpnFor, ClientStream, UpstreamTls};
use hyper_util::rt::TokioIo;

const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// gRPC INVALID_ARGUMENT, the code Envoy puts in a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

struct Client {
    shared: Arc<Shared>,
    ads: AdsConfig,
    statics: Statics,
    node: Node,
    stats: Arc<XdsStats>,
    state: Mutex<(Resources, Warming)>,
    /// When the pending re-apply runs, if one is pending: updates that
    /// arrive while something warms do not each start a timer of their own.
    reapply_due: std::sync::Mutex<Option<Instant>>,
}

pub fn spawn(shared: Arc<Shared>, ads: AdsConfig, statics: Statics, node: Node) {
    let stats = register(&shared);
    let client = Arc::new(Client {
        state: Mutex::new((Resources::default(), Warming::default())),
        reapply_due: std::sync::Mutex::new(None),
        shared,
        ads,
        statics,
        node,
        stats,
    });
    // Each wildcard subscription's initial fetch timeout: what has not
    // answered by then no longer holds the first config back (Envoy's).
    for kind in client.wildcards() {
        let timeout = match kind {
            Kind::Cluster => client.ads.cds_fetch_timeout,
            _ => client.ads.lds_fetch_timeout,
        };
        if let Some(t) = timeout {
            let c = client.clone();
            tokio::spawn(async move {
                tokio::time::sleep(t).await;
                c.give_up(kind).await;
            });
        }
    }
    tokio::spawn(async move { client.run().await });
}

impl Client {
    async fn run(self: Arc<Self>) {
        let mut attempt: u32 = 0;
        loop {
            let received = match self.connect().await {
                Some(channel) => {
                    let grpc = AggregatedDiscoveryServiceClient::new(channel);
                    let r = if self.ads.delta {
                        self.delta(grpc).await
                    } else {
                        self.sotw(grpc).await
                    };
                    match r {
                        Ok(received) => received,
                        Err((received, e)) => {
                            tracing::warn!(error = %e, "xDS stream closed");
                            received
                        }
                    }
                }
                None => false,
            };
            self.stats.connected_state.set(0);
            attempt = if received {
                0
            } else {
                attempt.saturating_add(1)
            };
            tokio::time::sleep(backoff(attempt)).await;
        }
    }

    async fn connect(&self) -> Option<tonic::transport::Channel> {
        let snapshot = self.shared.snapshot.load_full();
        let cluster = snapshot.clusters.get(&self.ads.cluster)?;
        let ep = cluster.pick(crate::rng::random())?;
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", ep.addr))
            .ok()?
            .connect_timeout(cluster.config.connect_timeout);
        let connector = AdsConnector {
            addr: ep.addr,
            tls: cluster.config.tls.clone(),
            ssl: cluster.ssl.clone(),
        };
        match endpoint.connect_with_connector(connector).await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::debug!(address = %ep.addr, error = %e, "cannot reach the management server");
                None
            }
        }
    }

    fn with_metadata<T>(&self, stream: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(stream);
        for (k, v) in &self.ads.metadata {
            req.metadata_mut().insert(k.clone(), v.clone());
        }
        req
    }

    fn kinds(&self) -> Vec<Kind> {
        let mut k = Vec::new();
        if self.ads.cds {
            k.extend([Kind::Cluster, Kind::Endpoint]);
        }
        if self.ads.lds {
            k.extend([Kind::Listener, Kind::Route]);
        }
        if self.ads.cds || self.ads.lds {
            k.push(Kind::Secret);
        }
        k
    }

    /// Validates and keeps an update, then swaps a new snapshot in.
    /// Returns the subscriptions that follow from the held resources, and the
    /// rejection to NACK with, if any part of the update was refused. The
    /// valid part of a rejected update is applied, as Envoy does.
    async fn accept(
        self: &Arc<Self>,
        update: Update,
    ) -> (Vec<(Kind, BTreeSet<String>)>, Result<(), String>) {
        let kind = update.kind;
        let version = update.version_info.clone();
        let count = update.resources.len();
        let mut guard = self.state.lock().await;
        let started = Instant::now();
        let (res, warming) = &mut *guard;
        let before = (kind == Kind::Listener).then(|| HeldListeners::of(res));
        let applied = res.apply(update);
        let mut outcome = applied.result;
        if let Some(before) = before {
            let claimed = claim_addresses(&self.shared, &self.statics, res, before);
            outcome = join(outcome, claimed);
        }
        if let Err(e) = &outcome {
            tracing::warn!(type_url = kind.type_url(), error = %e, "rejected xDS update");
        }
        let counted = self.count(kind, res, &applied.touched, outcome.is_ok());
        for (stats, ok) in &counted {
            stats.update_attempt.inc();
            if *ok {
                stats.update_success.inc();
                stats.version.set(version_hash(&version));
            } else {
                stats.update_rejected.inc();
            }
        }
        // Answered, whether accepted or not: as Envoy, the first config
        // does not wait on a type whose first response was refused.
        if kind.is_wildcard() {
            warming.initial.insert(kind);
        }
        let mut subs = Vec::new();
        if kind == Kind::Cluster {
            let names = res.eds_names();
            res.retain(Kind::Endpoint, &names);
            subs.push((Kind::Endpoint, names));
        }
        if kind == Kind::Listener {
            let names = res.rds_names();
            res.retain(Kind::Route, &names);
            subs.push((Kind::Route, names));
        }
        if kind == Kind::Listener || kind == Kind::Cluster {
            let names = res.secret_names();
            res.retain(Kind::Secret, &names);
            subs.push((Kind::Secret, names));
        }
        let next = apply(&self.shared, &self.statics, res, warming, &self.wildcards()).await;
        drop(guard);
        // Envoy's `update_duration`: from the decoded response to the new
        // config in force, for what was accepted.
        let took = started.elapsed();
        for (stats, _) in counted.iter().filter(|(_, ok)| *ok) {
            stats.update_duration.record(took);
        }
        if outcome.is_ok() {
            tracing::info!(
                type_url = kind.type_url(),
                %version,
                resources = count,
                duration_us = took.as_micros() as u64,
                "xDS update applied"
            );
        }
        self.schedule_reapply(next);
        (subs, outcome)
    }

    /// The stats an update counts in, each with whether it was taken there:
    /// CDS and LDS as a whole; EDS in each cluster it carries endpoints for,
    /// RDS in each route config it carries (Envoy's scopes). Scopes of
    /// what is no longer held are dropped.
    fn count(
        &self,
        kind: Kind,
        res: &Resources,
        touched: &[(String, bool)],
        ok: bool,
    ) -> Vec<(Arc<TypeStats>, bool)> {
        if kind == Kind::Cluster {
            self.stats
                .retain_eds(&res.clusters.keys().map(String::as_str).collect());
        }
        let rds = self.rds_scopes(res);
        if kind == Kind::Listener {
            self.stats.retain_rds(&rds.values().cloned().collect());
        }
        match kind {
            Kind::Endpoint => touched
                .iter()
                .flat_map(|(service, ok)| {
                    let clusters = res.clusters_of(service);
                    let clusters = if clusters.is_empty() {
                        vec![service.as_str()]
                    } else {
                        clusters
                    };
                    clusters.into_iter().map(|c| (self.stats.eds(c), *ok))
                })
                .collect(),
            Kind::Route => touched
                .iter()
                .filter_map(|(name, ok)| Some((self.stats.rds(rds.get(name)?), *ok)))
                .collect(),
            _ => self.stats.of(kind).map(|s| (s, ok)).into_iter().collect(),
        }
    }

    /// Each route config taken over RDS, with the scope its stats go in:
    /// the stat prefix of the first connection manager that takes it
    /// (static listeners first, then by name), as Envoy names the scope
    /// after the manager that subscribed first.
    fn rds_scopes(&self, res: &Resources) -> BTreeMap<String, RdsScope> {
        let mut scopes = BTreeMap::new();
        let listeners = self
            .statics
            .listeners
            .iter()
            .map(|l| l.as_ref())
            .chain(res.listeners.values().map(|h| h.value.as_ref()));
        for l in listeners {
            for (prefix, rds) in rds_by_prefix(l) {
                scopes
                    .entry(rds.name.to_string())
                    .or_insert_with(|| (prefix.clone(), rds.name.clone()));
            }
        }
        scopes
    }

    /// Applies again once a warming resource's fetch times out.
    fn schedule_reapply(self: &Arc<Self>, after: Option<Duration>) {
        let Some(t) = after else {
            return;
        };
        let due = Instant::now() + t;
        {
            let mut pending = self.reapply_due.lock().unwrap_or_else(|p| p.into_inner());
            // One that runs no later applies again and schedules what is
            // still to come.
            if pending.is_some_and(|p| p <= due && p > Instant::now()) {
                return;
            }
            *pending = Some(due);
        }
        let c = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(t).await;
            c.reapply(None).await;
        });
    }

    /// The initial fetch of a wildcard type timed out.
    async fn give_up(self: &Arc<Self>, kind: Kind) {
        self.reapply(Some(kind)).await;
    }

    async fn reapply(self: &Arc<Self>, timed_out: Option<Kind>) {
        let mut guard = self.state.lock().await;
        let (res, warming) = &mut *guard;
        if let Some(kind) = timed_out {
            warming.initial.insert(kind);
        }
        let next = apply(&self.shared, &self.statics, res, warming, &self.wildcards()).await;
        drop(guard);
        self.schedule_reapply(next);
    }

    /// The subscriptions that the first complete config waits on.
    fn wildcards(&self) -> Vec<Kind> {
        self.kinds()
            .into_iter()
            .filter(|k| k.is_wildcard())
            .collect()
    }

    // === state of the world ===

    async fn sotw(
        self: &Arc<Self>,
        mut grpc: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    ) -> Result<bool, (bool, String)> {
        let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
        let mut nonces: BTreeMap<Kind, String> = BTreeMap::new();
        let mut names: BTreeMap<Kind, BTreeSet<String>> = BTreeMap::new();
        {
            let guard = self.state.lock().await;
            let res = &guard.0;
            names.insert(Kind::Endpoint, res.eds_names());
            names.insert(Kind::Route, res.rds_names());
            names.insert(Kind::Secret, res.secret_names());
            for kind in self.kinds() {
                if !kind.is_wildcard() && names.get(&kind).is_none_or(BTreeSet::is_empty) {
                    continue;
                }
                let _ = tx
                    .send(DiscoveryRequest {
                        version_info: res.versions.get(&kind).cloned().unwrap_or_default(),
                        node: Some(self.node.clone()),
                        resource_names: names
                            .get(&kind)
                            .map(|n| n.iter().cloned().collect())
                            .unwrap_or_default(),
                        type_url: kind.type_url().to_string(),
                        ..Default::default()
                    })
                    .await;
            }
        }
        let mut stream = grpc
            .stream_aggregated_resources(self.with_metadata(ReceiverStream::new(rx)))
            .await
            .map_err(|e| (false, e.to_string()))?
            .into_inner();
        self.stats.connected_state.set(1);
        let mut received = false;
        loop {
            let resp: DiscoveryResponse = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(received),
                Err(e) => return Err((received, e.to_string())),
            };
            received = true;
            let Some(kind) = Kind::from_type_url(&resp.type_url) else {
                tracing::warn!(type_url = %resp.type_url, "ignoring a response of an unknown type");
                continue;
            };
            nonces.insert(kind, resp.nonce.clone());
            let update = Update {
                kind,
                version_info: resp.version_info.clone(),
                resources: resp
                    .resources
                    .into_iter()
                    .map(|a| (String::new(), a))
                    .collect(),
                removed: Vec::new(),
                replace_all: kind.is_wildcard(),
            };
            let (subs, outcome) = self.accept(update).await;
            let (version_info, error_detail) = match outcome {
                Ok(()) => (resp.version_info, None),
                Err(e) => {
                    let held = self
                        .state
                        .lock()
                        .await
                        .0
                        .versions
                        .get(&kind)
                        .cloned()
                        .unwrap_or_default();
                    (held, Some(nack(e)))
                }
            };
            let ack = DiscoveryRequest {
                version_info,
                node: Some(self.node.clone()),
                resource_names: names
                    .get(&kind)
                    .map(|n| n.iter().cloned().collect())
                    .unwrap_or_default(),
                type_url: resp.type_url,
                response_nonce: resp.nonce,
                error_detail,
                ..Default::default()
            };
            if tx.send(ack).await.is_err() {
                return Ok(received);
            }
            for (sub_kind, sub_names) in subs {
                if !self.kinds().contains(&sub_kind) || names.get(&sub_kind) == Some(&sub_names) {
                    continue;
                }
                let version_info = self
                    .state
                    .lock()
                    .await
                    .0
                    .versions
                    .get(&sub_kind)
                    .cloned()
                    .unwrap_or_default();
                let req = DiscoveryRequest {
                    version_info,
                    node: Some(self.node.clone()),
                    resource_names: sub_names.iter().cloned().collect(),
                    type_url: sub_kind.type_url().to_string(),
                    response_nonce: nonces.get(&sub_kind).cloned().unwrap_or_default(),
                    ..Default::default()
                };
                names.insert(sub_kind, sub_names);
                if tx.send(req).await.is_err() {
                    return Ok(received);
                }
            }
        }
    }

    // === delta ===

    async fn delta(
        self: &Arc<Self>,
        mut grpc: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    ) -> Result<bool, (bool, String)> {
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
        let mut names: BTreeMap<Kind, BTreeSet<String>> = BTreeMap::new();
        {
            let guard = self.state.lock().await;
            let res = &guard.0;
            names.insert(Kind::Endpoint, res.eds_names());
            names.insert(Kind::Route, res.rds_names());
            names.insert(Kind::Secret, res.secret_names());
            for kind in self.kinds() {
                let subscribe: Vec<String> = if kind.is_wildcard() {
                    Vec::new()
                } else {
                    match names.get(&kind) {
                        Some(n) if !n.is_empty() => n.iter().cloned().collect(),
                        _ => continue,
                    }
                };
                let _ = tx
                    .send(DeltaDiscoveryRequest {
                        node: Some(self.node.clone()),
                        type_url: kind.type_url().to_string(),
                        resource_names_subscribe: subscribe,
                        initial_resource_versions: res.held_versions(kind),
                        ..Default::default()
                    })
                    .await;
            }
        }
        let mut stream = grpc
            .delta_aggregated_resources(self.with_metadata(ReceiverStream::new(rx)))
            .await
            .map_err(|e| (false, e.to_string()))?
            .into_inner();
        self.stats.connected_state.set(1);
        let mut received = false;
        loop {
            let resp: DeltaDiscoveryResponse = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(received),
                Err(e) => return Err((received, e.to_string())),
            };
            received = true;
            let Some(kind) = Kind::from_type_url(&resp.type_url) else {
                tracing::warn!(type_url = %resp.type_url, "ignoring a response of an unknown type");
                continue;
            };
            let mut resources = Vec::new();
            for r in resp.resources {
                if let Some(any) = r.resource {
                    resources.push((r.version, any));
                }
            }
            let update = Update {
                kind,
                version_info: resp.system_version_info.clone(),
                resources,
                removed: resp.removed_resources,
                replace_all: false,
            };
            let (subs, outcome) = self.accept(update).await;
            let error_detail = outcome.err().map(nack);
            let ack = DeltaDiscoveryRequest {
                type_url: resp.type_url,
                response_nonce: resp.nonce,
                error_detail,
                ..Default::default()
            };
            if tx.send(ack).await.is_err() {
                return Ok(received);
            }
            for (sub_kind, sub_names) in subs {
                if !self.kinds().contains(&sub_kind) {
                    continue;
                }
                let old = names.get(&sub_kind).cloned().unwrap_or_default();
                if old == sub_names {
                    continue;
                }
                let req = DeltaDiscoveryRequest {
                    type_url: sub_kind.type_url().to_string(),
                    resource_names_subscribe: sub_names.difference(&old).cloned().collect(),
                    resource_names_unsubscribe: old.difference(&sub_names).cloned().collect(),
                    ..Default::default()
                };
                names.insert(sub_kind, sub_names);
                if tx.send(req).await.is_err() {
                    return Ok(received);
                }
            }
        }
    }
}

/// Both outcomes' errors, if any.
fn join(a: Result<(), String>, b: Result<(), String>) -> Result<(), String> {
    match (a, b) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(a), Err(b)) => Err(format!("{a}; {b}")),
    }
}

fn nack(message: String) -> Status {
    Status {
        code: INVALID_ARGUMENT,
        message,
        details: Vec::new(),
    }
}

/// Exponential backoff with full jitter, reset once a stream delivers.
fn backoff(attempt: u32) -> Duration {
    let exp = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(10))
        .min(BACKOFF_MAX);
    let ms = exp.as_millis() as u64;
    Duration::from_millis(ms / 2 + crate::rng::random::<u64>() % (ms / 2 + 1))
}

/// Dials the management server: TCP, then TLS when the ADS cluster has an
/// `UpstreamTlsContext` (ALPN `h2` unless the context sets its own), as
/// Envoy does for its xDS cluster.
#[derive(Clone)]
struct AdsConnector {
    addr: std::net::SocketAddr,
    tls: Option<Arc<UpstreamTls>>,
    /// The ADS cluster's `ssl.*` stats, where its handshakes count.
    ssl: Option<Arc<crate::tls::ClusterSslStats>>,
}

impl tonic::codegen::Service<http::Uri> for AdsConnector {
    type Response = TokioIo<ClientStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let AdsConnector { addr, tls, ssl } = self.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            let stream = match tls {
                Some(tls) => {
                    let ssl = ssl.as_deref().map(|s| &s.ssl);
                    tls.connect(tcp, addr, AlpnFor::Http2, ssl).await?
                }
                None => ClientStream::Plain(tcp),
            };
            Ok(TokioIo::new(stream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each wait is within [half, whole] of a bound that doubles from
    /// `BACKOFF_BASE` up to `BACKOFF_MAX`, and waits are spread (jitter).
    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        for attempt in 0..40u32 {
            let bound = BACKOFF_BASE
                .saturating_mul(2u32.saturating_pow(attempt))
                .min(BACKOFF_MAX);
            let waits: BTreeSet<Duration> = (0..200).map(|_| backoff(attempt)).collect();
            for w in &waits {
                assert!(
                    *w >= bound / 2 && *w <= bound,
                    "attempt {attempt}: {w:?} outside [{:?}, {bound:?}]",
                    bound / 2
                );
            }
            assert!(waits.len() > 10, "attempt {attempt}: no jitter: {waits:?}");
        }
    }
}
