//! A light, steady load on the gateway: `rate` requests per second, each
//! answer tallied by the backend version that served it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::client::Http;

#[derive(Default)]
pub struct Tally {
    pub v1: AtomicU64,
    pub v2: AtomicU64,
    pub failed: AtomicU64,
    /// The latest failure, to show the user what went wrong.
    pub last_error: Mutex<Option<String>>,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub v1: u64,
    pub v2: u64,
    pub failed: u64,
}

impl Counts {
    pub fn ok(&self) -> u64 {
        self.v1 + self.v2
    }

    pub fn since(&self, earlier: Counts) -> Counts {
        Counts {
            v1: self.v1 - earlier.v1,
            v2: self.v2 - earlier.v2,
            failed: self.failed - earlier.failed,
        }
    }

    /// v2's share of the successful answers, in percent.
    pub fn v2_percent(&self) -> f64 {
        if self.ok() == 0 {
            0.0
        } else {
            100.0 * self.v2 as f64 / self.ok() as f64
        }
    }
}

impl Tally {
    pub fn counts(&self) -> Counts {
        Counts {
            v1: self.v1.load(Ordering::Relaxed),
            v2: self.v2.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(why);
        }
    }
}

/// Sends until the task is aborted.
pub fn start(http: Http, url: String, rate: u32, tally: Arc<Tally>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (http, url, tally) = (http.clone(), url.clone(), tally.clone());
            tokio::spawn(async move {
                match http.get(&url, None).await {
                    Ok((status, body)) if status.is_success() => {
                        let doc: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        match doc["backend"]["version"].as_str() {
                            Some("v1") => {
                                tally.v1.fetch_add(1, Ordering::Relaxed);
                            }
                            Some("v2") => {
                                tally.v2.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => tally.fail(format!("unexpected answer: {doc}")),
                        }
                    }
                    Ok((status, body)) => tally.fail(format!(
                        "{status}: {}",
                        String::from_utf8_lossy(&body).trim()
                    )),
                    Err(e) => tally.fail(e.to_string()),
                }
            });
        }
    })
}
