//! Named secrets (Envoy's SDS): from `static_resources.secrets`, over ADS, or
//! from an SDS file (`sds_config.path_config_source`) that is polled for
//! changes. Each name resolves to a [`Slot`] that TLS contexts hold; a new
//! version is swapped into the slot and the next handshake reads it.
//!
//! The store is process-wide because a secret is shared by every listener
//! and cluster that names it, across config versions, like Envoy's secret
//! manager.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use prost::Message;
use xds_protos::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use xds_protos::envoy::extensions::transport_sockets::tls::v3::{SdsSecretConfig, Secret};
use xds_protos::envoy::service::discovery::v3::DiscoveryResponse;

use super::material::compile_secret;
pub use super::material::SecretValue;
use crate::config::ConfigError;

/// How often an SDS file is checked when its config gives no poll interval.
const DEFAULT_POLL: Duration = Duration::from_millis(250);

/// One named secret's current value; empty until it first arrives.
pub struct Slot {
    pub name: String,
    value: ArcSwapOption<SecretValue>,
    /// Set once a handshake met the secret missing.
    missed: AtomicBool,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("name", &self.name).finish()
    }
}

impl Slot {
    pub fn load(&self) -> Option<Arc<SecretValue>> {
        self.value.load_full()
    }

    /// True the first time a handshake meets the secret missing, so that
    /// is warned of once, not once per (possibly hostile) handshake.
    pub fn first_miss(&self) -> bool {
        !self.missed.swap(true, Ordering::Relaxed)
    }

    fn set(&self, v: SecretValue) {
        self.value.store(Some(Arc::new(v)));
    }
}

/// Where a secret comes from; the same name from two sources is two secrets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    Static,
    Ads,
    File(PathBuf),
}

#[derive(Default)]
struct Store {
    slots: Mutex<HashMap<(Source, String), Arc<Slot>>>,
    watched: Mutex<HashSet<PathBuf>>,
}

fn store() -> &'static Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(Store::default)
}

fn slot(source: Source, name: &str) -> Arc<Slot> {
    let mut slots = store().slots.lock().unwrap_or_else(|p| p.into_inner());
    slots
        .entry((source, name.to_string()))
        .or_insert_with(|| {
            Arc::new(Slot {
                name: name.to_string(),
                value: ArcSwapOption::empty(),
                missed: AtomicBool::new(false),
            })
        })
        .clone()
}

/// A context's reference to a secret: its slot, and whether the proxy must
/// ask for it over ADS.
pub struct SecretRef {
    pub slot: Arc<Slot>,
    pub ads: bool,
}

/// Resolves an `SdsSecretConfig` to its slot. A file source is read now, so
/// that a bad file fails the config that names it, and then watched.
pub fn resolve(cfg: &SdsSecretConfig) -> Result<SecretRef, ConfigError> {
    if cfg.name.is_empty() {
        return Err(ConfigError::new("name", "a secret name is required"));
    }
    #[allow(deprecated)]
    let source = match cfg.sds_config.as_ref().map(|c| &c.config_source_specifier) {
        None => {
            let s = slot(Source::Static, &cfg.name);
            if s.load().is_none() {
                return Err(ConfigError::new(
                    "name",
                    format!(
                        "no static secret named '{}' (static_resources.secrets)",
                        cfg.name
                    ),
                ));
            }
            return Ok(SecretRef {
                slot: s,
                ads: false,
            });
        }
        Some(Some(ConfigSourceSpecifier::Ads(_))) => Source::Ads,
        Some(Some(ConfigSourceSpecifier::PathConfigSource(p))) => {
            let interval = match &p.poll_interval {
                Some(d) => crate::config::duration::to_std(d, "poll_interval")
                    .map_err(|e| e.at("sds_config.path_config_source"))?,
                None => DEFAULT_POLL,
            };
            watch_file(Path::new(&p.path), interval)
                .map_err(|e| e.at("sds_config.path_config_source.path"))?
        }
        Some(Some(ConfigSourceSpecifier::Path(p))) => {
            watch_file(Path::new(p), DEFAULT_POLL).map_err(|e| e.at("sds_config.path"))?
        }
        Some(_) => {
            return Err(ConfigError::new(
                "sds_config",
                "only ads and path_config_source SDS sources are supported by trellis",
            ))
        }
    };
    let ads = source == Source::Ads;
    Ok(SecretRef {
        slot: slot(source, &cfg.name),
        ads,
    })
}

/// Compiles and keeps the bootstrap's `static_resources.secrets`.
pub fn set_static(secrets: &[Secret]) -> Result<(), ConfigError> {
    let compiled = secrets
        .iter()
        .enumerate()
        .map(|(i, s)| compile_secret(s).map_err(|e| e.at(format!("[{i}]"))))
        .collect::<Result<Vec<_>, _>>()?;
    for (s, v) in secrets.iter().zip(compiled) {
        slot(Source::Static, &s.name).set(v);
    }
    Ok(())
}

/// Decodes and compiles one `Secret` from xDS, for validation before it is
/// kept; a refusal carries the secret's name when it could be read.
pub fn decode(raw: &[u8]) -> Result<(String, SecretValue), (Option<String>, String)> {
    let s = Secret::decode(raw).map_err(|e| (None, format!("Secret: cannot decode: {e}")))?;
    match compile_secret(&s) {
        Ok(v) => Ok((s.name, v)),
        Err(e) => {
            let msg = format!("Secret '{}': {e}", s.name);
            Err((Some(s.name), msg))
        }
    }
}

/// Makes an accepted ADS secret current: the next handshake uses it.
pub fn publish_ads(name: &str, value: &SecretValue) {
    slot(Source::Ads, name).set(value.clone());
}

/// Identity of a file's version: change in any of these means re-read.
type Stamp = (Option<SystemTime>, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok(), m.len()))
}

/// Reads an SDS file (a `DiscoveryResponse` of `Secret`s, YAML or JSON) and
/// updates the slots of the secrets in it; all or nothing.
fn load_file(path: &Path) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("", format!("{}: {e}", path.display())))?;
    let format = crate::bootstrap::Format::of(path, &text);
    let resp: DiscoveryResponse =
        crate::bootstrap::parse_message(&text, format).map_err(|e| e.at(path.display()))?;
    let mut compiled = Vec::new();
    for (i, any) in resp.resources.iter().enumerate() {
        let s = xds_protos::any::unpack::<Secret>(any)
            .map_err(|e| ConfigError::new(format!("resources[{i}]"), e).at(path.display()))?;
        let v =
            compile_secret(&s).map_err(|e| e.at(format!("resources[{i}]")).at(path.display()))?;
        compiled.push((s.name, v));
    }
    let source = Source::File(path.to_path_buf());
    for (name, v) in compiled {
        slot(source.clone(), &name).set(v);
    }
    Ok(())
}

/// Loads an SDS file once and, if not yet done for this path, starts polling
/// it for changes.
fn watch_file(path: &Path, interval: Duration) -> Result<Source, ConfigError> {
    let path = path.to_path_buf();
    let source = Source::File(path.clone());
    let first = store()
        .watched
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(path.clone());
    if !first {
        return Ok(source);
    }
    let mut seen = stamp(&path);
    if let Err(e) = load_file(&path) {
        store()
            .watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&path);
        return Err(e);
    }
    // A plain thread: the bootstrap is compiled before the runtime starts,
    // and a stat call per interval needs nothing from it.
    let spawned = std::thread::Builder::new()
        .name("sds-file".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            let now = stamp(&path);
            if now.is_none() || now == seen {
                continue;
            }
            // A file caught mid-write fails to parse; its stamp is not
            // recorded, so the next tick reads it again.
            match load_file(&path) {
                Ok(()) => {
                    seen = now;
                    tracing::info!(path = %path.display(), "SDS file reloaded");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "SDS file not reloaded; keeping the previous secrets")
                }
            }
        });
    if let Err(e) = spawned {
        return Err(ConfigError::new(
            "",
            format!("cannot start the SDS file watcher: {e}"),
        ));
    }
    Ok(source)
}
