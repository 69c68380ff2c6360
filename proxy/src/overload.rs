//! Envoy's overload manager, the part trellis implements: the `fixed_heap`
//! resource monitor (measured as the process's resident memory, the figure
//! `server.memory_allocated` shows), the `global_downstream_max_connections`
//! monitor, and the actions that shed load before the process falls over:
//! `stop_accepting_connections`, `reject_incoming_connections` and
//! `stop_accepting_requests`.
//!
//! A background task samples memory every `refresh_interval` and flips one
//! atomic flag per action; the accept loop and the request path read the
//! flags (one relaxed load each), never the monitor.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use xds_protos::envoy::config::overload::v3::{trigger::TriggerOneof, OverloadManager};
use xds_protos::envoy::extensions::resource_monitors::downstream_connections::v3::DownstreamConnectionsConfig;
use xds_protos::envoy::extensions::resource_monitors::fixed_heap::v3::FixedHeapConfig;

use crate::config::{duration, ConfigError};
use crate::stats::{Scope, StatSource, Visitor};

pub const FIXED_HEAP: &str = "envoy.resource_monitors.fixed_heap";
pub const GLOBAL_CONNECTIONS: &str = "envoy.resource_monitors.global_downstream_max_connections";
const FIXED_HEAP_TYPE: &str =
    "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig";
const GLOBAL_CONNECTIONS_TYPE: &str = "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig";
/// Envoy's default `refresh_interval`.
const DEFAULT_REFRESH: Duration = Duration::from_secs(1);

/// The overload actions trellis takes, by Envoy's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Leave new connections in the kernel's backlog.
    StopAcceptingConnections,
    /// Accept new connections and close them at once.
    RejectIncomingConnections,
    /// Answer new requests 503 `envoy overloaded`.
    StopAcceptingRequests,
}

impl Action {
    const ALL: [Action; 3] = [
        Action::StopAcceptingConnections,
        Action::RejectIncomingConnections,
        Action::StopAcceptingRequests,
    ];

    fn name(self) -> &'static str {
        match self {
            Action::StopAcceptingConnections => "envoy.overload_actions.stop_accepting_connections",
            Action::RejectIncomingConnections => {
                "envoy.overload_actions.reject_incoming_connections"
            }
            Action::StopAcceptingRequests => "envoy.overload_actions.stop_accepting_requests",
        }
    }

    fn from_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// `overload_manager`, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OverloadConfig {
    pub refresh: Duration,
    /// `fixed_heap.max_heap_size_bytes`.
    pub max_heap_bytes: Option<u64>,
    /// `global_downstream_max_connections.max_active_downstream_connections`.
    pub max_connections: Option<u64>,
    /// Each action with the heap pressure (0–1) at which it fires.
    pub actions: Vec<(Action, f64)>,
}

impl OverloadConfig {
    pub fn compile(m: &OverloadManager) -> Result<OverloadConfig, ConfigError> {
        let mut cfg = OverloadConfig {
            refresh: duration::timeout(
                m.refresh_interval.as_ref(),
                Some(DEFAULT_REFRESH),
                "refresh_interval",
            )?
            .unwrap_or(DEFAULT_REFRESH),
            ..OverloadConfig::default()
        };
        for (i, r) in m.resource_monitors.iter().enumerate() {
            let path = format!("resource_monitors[{i}]");
            let any = r.config_type.as_ref().map(|c| match c {
                xds_protos::envoy::config::overload::v3::resource_monitor::ConfigType::TypedConfig(a) => a,
            });
            let Some(any) = any else {
                return Err(ConfigError::new(
                    format!("{path}.typed_config"),
                    "typed_config is required",
                ));
            };
            match (r.name.as_str(), any.type_url.as_str()) {
                (FIXED_HEAP, FIXED_HEAP_TYPE) => {
                    let c: FixedHeapConfig = xds_protos::any::unpack(any)
                        .map_err(|e| ConfigError::new(format!("{path}.typed_config"), e))?;
                    if c.max_heap_size_bytes == 0 {
                        return Err(ConfigError::new(
                            format!("{path}.typed_config.max_heap_size_bytes"),
                            "must be greater than 0",
                        ));
                    }
                    cfg.max_heap_bytes = Some(c.max_heap_size_bytes);
                }
                (GLOBAL_CONNECTIONS, GLOBAL_CONNECTIONS_TYPE) => {
                    let c: DownstreamConnectionsConfig = xds_protos::any::unpack(any)
                        .map_err(|e| ConfigError::new(format!("{path}.typed_config"), e))?;
                    let max = u64::try_from(c.max_active_downstream_connections)
                        .ok()
                        .filter(|m| *m > 0)
                        .ok_or_else(|| {
                            ConfigError::new(
                                format!("{path}.typed_config.max_active_downstream_connections"),
                                "must be greater than 0",
                            )
                        })?;
                    cfg.max_connections = Some(max);
                }
                (name, url) => {
                    return Err(ConfigError::new(
                        path,
                        format!("resource monitor '{name}' ({url}) is not supported by trellis"),
                    ))
                }
            }
        }
        for (i, a) in m.actions.iter().enumerate() {
            let path = format!("actions[{i}]");
            let action = Action::from_name(&a.name).ok_or_else(|| {
                ConfigError::new(
                    format!("{path}.name"),
                    format!("overload action '{}' is not supported by trellis", a.name),
                )
            })?;
            for (j, t) in a.triggers.iter().enumerate() {
                let path = format!("{path}.triggers[{j}]");
                if t.name != FIXED_HEAP || cfg.max_heap_bytes.is_none() {
                    return Err(ConfigError::new(
                        format!("{path}.name"),
                        format!(
                            "'{}' is not a configured resource monitor that actions can use \
                             (trellis: {FIXED_HEAP})",
                            t.name
                        ),
                    ));
                }
                let value = match &t.trigger_oneof {
                    Some(TriggerOneof::Threshold(th)) => th.value,
                    Some(TriggerOneof::Scaled(_)) => {
                        return Err(ConfigError::new(
                            format!("{path}.scaled"),
                            "scaled triggers are not supported by trellis; use threshold",
                        ))
                    }
                    None => return Err(ConfigError::new(path, "a threshold trigger is required")),
                };
                if !(0.0..=1.0).contains(&value) {
                    return Err(ConfigError::new(
                        format!("{path}.threshold.value"),
                        "must be between 0 and 1",
                    ));
                }
                cfg.actions.push((action, value));
            }
        }
        Ok(cfg)
    }
}

/// The overload state of the process: flags the hot paths read, and the
/// global downstream connection count.
#[derive(Debug, Default)]
pub struct Overload {
    config: OverloadConfig,
    active: [AtomicBool; 3],
    /// Heap pressure in hundredths of a percent of `max_heap_bytes`.
    pressure: AtomicU64,
    connections: AtomicI64,
    /// Woken when an action turns off, so a paused accept loop resumes.
    changed: tokio::sync::Notify,
}

/// One downstream connection counted against the global limit while it lives.
#[derive(Debug)]
pub struct ConnectionPermit(Arc<Overload>);

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Overload {
    pub fn new(config: OverloadConfig) -> Overload {
        Overload {
            config,
            ..Overload::default()
        }
    }

    pub fn is_active(&self, action: Action) -> bool {
        self.active[action as usize].load(Ordering::Relaxed)
    }

    /// Counts a new downstream connection; `None` when the global limit is
    /// reached (Envoy's `downstream_global_cx_overflow`).
    pub fn admit_connection(self: &Arc<Self>) -> Option<ConnectionPermit> {
        let now = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let permit = ConnectionPermit(self.clone());
        match self.config.max_connections {
            Some(max) if now as u64 > max => None,
            _ => Some(permit),
        }
    }

    /// Waits until `action` is off.
    pub async fn until_inactive(&self, action: Action) {
        loop {
            let changed = self.changed.notified();
            if !self.is_active(action) {
                return;
            }
            changed.await;
        }
    }

    /// Samples memory every `refresh_interval` while any action depends on it.
    pub fn spawn_monitor(self: &Arc<Self>) {
        let Some(max) = self.config.max_heap_bytes else {
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.config.refresh);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                me.update(resident_bytes() as f64 / max as f64);
            }
        });
    }

    /// Applies a pressure reading (1.0 = at `max_heap_size_bytes`).
    fn update(&self, pressure: f64) {
        self.pressure
            .store((pressure * 10_000.0) as u64, Ordering::Relaxed);
        let mut turned_off = false;
        for action in Action::ALL {
            let on = self
                .config
                .actions
                .iter()
                .any(|(a, threshold)| *a == action && pressure >= *threshold);
            let was = self.active[action as usize].swap(on, Ordering::Relaxed);
            if was != on {
                tracing::warn!(action = action.name(), active = on, pressure, "overload");
                turned_off |= was;
            }
        }
        if turned_off {
            self.changed.notify_waiters();
        }
    }
}

/// Resident memory from `/proc/self/statm`: trellis uses the system
/// allocator, which keeps no allocated-bytes figure like Envoy's tcmalloc.
pub fn resident_bytes() -> i64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<i64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Envoy's `overload.*` stats, for the monitors and actions configured.
impl StatSource for Overload {
    fn visit(&self, v: &mut dyn Visitor) {
        let s = Scope::new("overload", None);
        if self.config.max_heap_bytes.is_some() {
            // Envoy shows pressure as a percentage.
            let pct = self.pressure.load(Ordering::Relaxed) / 100;
            v.gauge(&s, &format!("{FIXED_HEAP}.pressure"), pct as i64);
        }
        if let Some(max) = self.config.max_connections {
            let now = self.connections.load(Ordering::Relaxed).max(0) as u64;
            let pct = (now.min(max) * 100 / max) as i64;
            v.gauge(&s, &format!("{GLOBAL_CONNECTIONS}.pressure"), pct);
        }
        for action in Action::ALL {
            if self.config.actions.iter().any(|(a, _)| *a == action) {
                let on = i64::from(self.is_active(action));
                v.gauge(&s, &format!("{}.active", action.name()), on);
                v.gauge(&s, &format!("{}.scale_percent", action.name()), on * 100);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Result<OverloadConfig, ConfigError> {
        let b = crate::bootstrap::parse(yaml, crate::bootstrap::Format::Yaml)?;
        OverloadConfig::compile(&b.overload_manager.unwrap_or_default())
    }

    const HEAP: &str = r#"
overload_manager:
  refresh_interval: 0.25s
  resource_monitors:
  - name: envoy.resource_monitors.fixed_heap
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig
      max_heap_size_bytes: 1000
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
      max_active_downstream_connections: 2
  actions:
  - name: envoy.overload_actions.stop_accepting_requests
    triggers:
    - name: envoy.resource_monitors.fixed_heap
      threshold: { value: 0.9 }
"#;

    #[test]
    fn thresholds_switch_actions() {
        let o = Overload::new(config(HEAP).unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(o.config.refresh, Duration::from_millis(250));
        o.update(0.5);
        assert!(!o.is_active(Action::StopAcceptingRequests));
        o.update(0.9);
        assert!(o.is_active(Action::StopAcceptingRequests));
        assert!(!o.is_active(Action::StopAcceptingConnections));
        o.update(0.1);
        assert!(!o.is_active(Action::StopAcceptingRequests));
    }

    #[test]
    fn the_global_limit_counts_live_connections() {
        let o = Arc::new(Overload::new(
            config(HEAP).unwrap_or_else(|e| panic!("{e}")),
        ));
        let a = o.admit_connection();
        let b = o.admit_connection();
        assert!(a.is_some() && b.is_some());
        assert!(o.admit_connection().is_none(), "a third is over the limit");
        drop(a);
        assert!(
            o.admit_connection().is_some(),
            "a closed one frees its place"
        );
    }

    #[test]
    fn unsupported_parts_are_named() {
        let e = config(&HEAP.replace("stop_accepting_requests", "shrink_heap")).unwrap_err();
        assert_eq!(e.path, "actions[0].name");
        let e = config(&HEAP.replace(
            "- name: envoy.resource_monitors.fixed_heap\n      threshold",
            "- name: envoy.resource_monitors.global_downstream_max_connections\n      threshold",
        ))
        .unwrap_err();
        assert_eq!(e.path, "actions[0].triggers[0].name");
        let e = config(&HEAP.replace("max_heap_size_bytes: 1000", "max_heap_size_bytes: 0"))
            .unwrap_err();
        assert_eq!(
            e.path,
            "resource_monitors[0].typed_config.max_heap_size_bytes"
        );
    }
}
