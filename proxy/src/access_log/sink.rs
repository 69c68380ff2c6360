//! Where access log lines go: one writer thread per destination, fed by a
//! bounded channel. A request only ever `try_send`s its line, so a slow or
//! full disk drops lines (counted) instead of slowing traffic. Files are
//! reopened after SIGUSR1 so logrotate can move them away.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::stats::{Counter, Scope, Visitor};

/// Lines a destination may queue before new ones are dropped.
const QUEUE_LINES: usize = 16 * 1024;

/// Bumped by SIGUSR1; writers reopen their file when it moves on.
static REOPEN: AtomicU64 = AtomicU64::new(0);

/// Process-wide counters, Envoy's `access_logs.file.*` plus the drops that
/// trellis's never-block rule adds.
#[derive(Default)]
pub struct LogStats {
    pub write_buffered: Counter,
    pub write_completed: Counter,
    pub write_failed: Counter,
    pub write_dropped: Counter,
    pub reopen_failed: Counter,
}

pub fn stats() -> &'static LogStats {
    static STATS: OnceLock<LogStats> = OnceLock::new();
    STATS.get_or_init(LogStats::default)
}

/// Lists the access log counters, for the admin pages.
pub fn visit_stats(v: &mut dyn Visitor) {
    let s = stats();
    let scope = Scope::new("access_logs", None);
    v.counter(&scope, "file.write_buffered", s.write_buffered.get());
    v.counter(&scope, "file.write_completed", s.write_completed.get());
    v.counter(&scope, "file.write_failed", s.write_failed.get());
    v.counter(&scope, "file.write_dropped", s.write_dropped.get());
    v.counter(&scope, "file.reopen_failed", s.reopen_failed.get());
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    File(PathBuf),
    Stdout,
    Stderr,
}

/// One destination. Loggers that name the same path share it, as in
/// Envoy, so their lines never interleave mid-line.
#[derive(Debug)]
pub struct Sink {
    tx: SyncSender<String>,
}

impl Sink {
    /// The sink for `target`, opening it (and starting its writer) if no
    /// live logger uses it yet. Fails if a file cannot be opened, so a bad
    /// path is a config error rather than silence.
    pub fn get(target: Target) -> std::io::Result<Arc<Sink>> {
        static OPEN: OnceLock<Mutex<HashMap<Target, Weak<Sink>>>> = OnceLock::new();
        let mut open = OPEN
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        open.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = open.get(&target).and_then(Weak::upgrade) {
            return Ok(s);
        }
        let out = Output::open(&target)?;
        let (tx, rx) = sync_channel(QUEUE_LINES);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(out, rx))?;
        let sink = Arc::new(Sink { tx });
        open.insert(target, Arc::downgrade(&sink));
        Ok(sink)
    }

    /// Never blocks: a full queue drops the line and counts it.
    pub fn send(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => stats().write_buffered.inc(),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                stats().write_dropped.inc()
            }
        }
    }
}

/// Reopens every file sink before its next write (log rotation).
pub fn reopen_all() {
    REOPEN.fetch_add(1, Ordering::Relaxed);
}

enum Output {
    File(PathBuf, BufWriter<File>),
    Stdout(std::io::Stdout),
    Stderr(std::io::Stderr),
}

impl Output {
    fn open(t: &Target) -> std::io::Result<Output> {
        Ok(match t {
            Target::File(p) => Output::File(p.clone(), BufWriter::new(append(p)?)),
            Target::Stdout => Output::Stdout(std::io::stdout()),
            Target::Stderr => Output::Stderr(std::io::stderr()),
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Output::File(_, w) => w,
            Output::Stdout(w) => w,
            Output::Stderr(w) => w,
        }
    }
}

fn append(p: &PathBuf) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(p)
}

/// Writes lines as they come and flushes whenever the queue runs dry, so a
/// quiet proxy's log is complete on disk within one line's latency.
fn write_loop(mut out: Output, rx: Receiver<String>) {
    let s = stats();
    let mut generation = REOPEN.load(Ordering::Relaxed);
    while let Ok(first) = rx.recv() {
        let now = REOPEN.load(Ordering::Relaxed);
        if now != generation {
            generation = now;
            if let Output::File(p, w) = &mut out {
                let _ = w.flush();
                match append(p) {
                    Ok(f) => *w = BufWriter::new(f),
                    Err(_) => s.reopen_failed.inc(),
                }
            }
        }
        let mut line = Some(first);
        while let Some(l) = line.take() {
            match out.writer().write_all(l.as_bytes()) {
                Ok(()) => s.write_completed.inc(),
                Err(_) => s.write_failed.inc(),
            }
            match rx.try_recv() {
                Ok(next) => line = Some(next),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => {}
            }
        }
        if out.writer().flush().is_err() {
            s.write_failed.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that has stopped (a stuck disk, a pipe nobody reads) fills
    /// the queue; further lines are dropped and counted, never waited for.
    #[test]
    fn a_full_queue_drops_lines_without_blocking() {
        let (tx, _stuck) = sync_channel(2);
        let sink = Sink { tx };
        let before = stats().write_dropped.get();
        let started = std::time::Instant::now();
        for i in 0..5 {
            sink.send(format!("line {i}\n"));
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(stats().write_dropped.get() - before >= 3);
    }
}
