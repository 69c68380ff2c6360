//! A process's resident memory while a hostile pattern runs: sampled on a
//! thread of its own (a flood loop that never yields cannot starve it),
//! reported, and checked against a bound generous enough that only a leak
//! or an unbounded buffer fails it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::h2raw::rss_kib;

/// How much a flood may grow the proxy.
pub const RSS_GROWTH_KIB: u64 = 64 * 1024;

pub struct RssWatch {
    pid: u32,
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
    before: u64,
}

impl RssWatch {
    pub fn start(pid: u32) -> RssWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let before = rss_kib(pid);
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssWatch {
            pid,
            stop,
            peak,
            thread,
            before,
        }
    }

    /// Prints the figure (`--nocapture`) and checks the bound.
    pub fn finish(self, what: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let peak = self.peak.load(Ordering::Relaxed).max(self.before);
        let after = rss_kib(self.pid);
        println!(
            "RSS during {what}: before {} KiB, peak {peak} KiB, after {after} KiB",
            self.before
        );
        assert!(
            peak < self.before + RSS_GROWTH_KIB,
            "{what}: RSS grew from {} KiB to {peak} KiB",
            self.before
        );
    }
}
