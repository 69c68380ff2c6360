//! Assembling a running proxy from a bootstrap: compile, warm clusters, bind
//! listeners and admin, report ready, then wait for a signal and drain.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use xds_protos::envoy::config::bootstrap::v3::Bootstrap;

use crate::admin::{self, Admin, SetLogLevel};
use crate::config::cluster::ClusterConfig;
use crate::config::listener::ListenerConfig;
use crate::config::{address, ConfigError};
use crate::shared::{NodeInfo, Shared};
use crate::snapshot::Snapshot;
use crate::upstream::ClusterMap;
use crate::xds::{self, AdsConfig};

/// The static part of a bootstrap, validated and compiled.
pub struct StaticConfig {
    pub listeners: Vec<Arc<ListenerConfig>>,
    pub clusters: Vec<Arc<ClusterConfig>>,
    pub admin: Option<std::net::SocketAddr>,
    pub ads: Option<AdsConfig>,
    pub overload: crate::overload::OverloadConfig,
}

impl StaticConfig {
    pub fn compile(b: &Bootstrap) -> Result<StaticConfig, ConfigError> {
        let ads = match &b.dynamic_resources {
            Some(d) => Some(AdsConfig::compile(d).map_err(|e| e.at("dynamic_resources"))?),
            None => None,
        };
        let mut listeners = Vec::new();
        let mut clusters = Vec::new();
        if let Some(sr) = &b.static_resources {
            // Before listeners and clusters, which may name these secrets.
            crate::tls::secrets::set_static(&sr.secrets)
                .map_err(|e| e.at("static_resources.secrets"))?;
            let mut names = std::collections::HashSet::new();
            for (i, l) in sr.listeners.iter().enumerate() {
                let path = format!("static_resources.listeners[{i}]");
                let l = ListenerConfig::compile(l).map_err(|e| e.at(&path))?;
                if !names.insert(l.name.clone()) {
                    return Err(ConfigError::new(
                        format!("{path}.name"),
                        format!("duplicate listener name '{}'", l.name),
                    ));
                }
                listeners.push(Arc::new(l));
            }
            let mut names = std::collections::HashSet::new();
            for (i, c) in sr.clusters.iter().enumerate() {
                let path = format!("static_resources.clusters[{i}]");
                let c = ClusterConfig::compile(c).map_err(|e| e.at(&path))?;
                if !names.insert(c.name.clone()) {
                    return Err(ConfigError::new(
                        format!("{path}.name"),
                        format!("duplicate cluster name '{}'", c.name),
                    ));
                }
                clusters.push(Arc::new(c));
            }
        }
        let admin = match &b.admin {
            Some(a) if a.address.is_some() => {
                Some(address::bind_address(a.address.as_ref(), "admin.address")?)
            }
            _ => None,
        };
        if let Some(a) = &ads {
            if !clusters.iter().any(|c| c.name == a.cluster) {
                return Err(ConfigError::new(
                    "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name",
                    format!(
                        "unknown cluster '{}': the ADS cluster must be in static_resources",
                        a.cluster
                    ),
                ));
            }
        }
        let overload = match &b.overload_manager {
            Some(m) => {
                crate::overload::OverloadConfig::compile(m).map_err(|e| e.at("overload_manager"))?
            }
            None => crate::overload::OverloadConfig::default(),
        };
        Ok(StaticConfig {
            listeners,
            clusters,
            admin,
            ads,
            overload,
        })
    }
}

pub struct Options {
    pub node: NodeInfo,
    pub concurrency: usize,
    pub drain_time: Duration,
    pub admin_address_path: Option<PathBuf>,
    pub set_log_level: SetLogLevel,
    /// Returns freed heap memory to the system (see `memory`).
    pub release_memory: Option<fn()>,
}

pub async fn run(bootstrap: Bootstrap, config: StaticConfig, opts: Options) -> anyhow::Result<()> {
    let shared = Arc::new(Shared::new(
        opts.node,
        opts.concurrency,
        opts.drain_time,
        config.overload.clone(),
    ));
    shared.overload.spawn_monitor();
    // As Envoy does: nothing else bounds the connections a proxy facing the
    // internet may be made to hold.
    if config.overload.max_connections.is_none() {
        tracing::warn!(
            "no limit on active downstream connections: configure one with the \
             overload_manager's envoy.resource_monitors.global_downstream_max_connections monitor"
        );
    }

    let clusters = ClusterMap::default()
        .update(config.clusters.clone(), &shared.store)
        .await;
    shared.snapshot.store(Arc::new(Snapshot {
        listeners: config.listeners.clone(),
        clusters: Arc::new(clusters),
        routes: Default::default(),
        bootstrap: Some(Arc::new(bootstrap.clone())),
        dynamic: Vec::new(),
    }));

    if let Some(addr) = config.admin {
        let socket = admin::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("admin: cannot bind {addr}: {e}"))?;
        let local = socket.local_addr()?;
        if let Some(path) = &opts.admin_address_path {
            std::fs::write(path, local.to_string())
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
        tracing::info!(address = %local, "admin listening");
        Arc::new(Admin {
            shared: shared.clone(),
            set_log_level: opts.set_log_level,
        })
        .spawn(socket);
    }
    shared
        .listeners
        .reconcile(&shared, &config.listeners)
        .map_err(|e| anyhow::anyhow!(e))?;
    crate::access_log::reopen_on_sigusr1();
    if let Some(release) = opts.release_memory {
        crate::memory::spawn_release(release);
    }
    let drainer = shared.clone();
    tokio::spawn(async move {
        drainer.drain.watch().signaled().await;
        drainer.listeners.drain_all();
    });
    match config.ads.clone() {
        Some(ads) => {
            let statics = xds::Statics {
                clusters: config.clusters.clone(),
                listeners: config.listeners.clone(),
            };
            xds::spawn(
                shared.clone(),
                ads,
                statics,
                bootstrap.node.clone().unwrap_or_default(),
            );
        }
        None => {
            shared.live.store(true, Ordering::Relaxed);
            tracing::info!("all listeners started; proxy is LIVE");
        }
    }

    wait_for_exit(&shared).await;
    tracing::info!(drain_time_s = shared.drain_time.as_secs(), "draining");
    shared.shutting_down.store(true, Ordering::Relaxed);
    shared.drain.start();
    let deadline = tokio::time::Instant::now() + shared.drain_time;
    while active_connections(&shared) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!("exiting");
    Ok(())
}

async fn wait_for_exit(shared: &Shared) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        shared.shutdown.notified().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = shared.shutdown.notified() => {}
    }
}

fn active_connections(shared: &Shared) -> i64 {
    struct Sum(i64);
    impl crate::stats::Visitor for Sum {
        fn counter(&mut self, _: &crate::stats::Scope, _: &str, _: u64) {}
        fn gauge(&mut self, scope: &crate::stats::Scope, name: &str, value: i64) {
            if scope.kind == "listener" && name == "downstream_cx_active" {
                self.0 += value;
            }
        }
    }
    let mut s = Sum(0);
    shared.store.visit(&mut s);
    s.0
}
