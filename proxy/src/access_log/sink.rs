//! Where access log lines go: one writer thread per destination, fed by a
//! bounded buffer. A request appends its line under a lock held for a copy
//! and wakes the writer only when the buffer was empty; the writer waits a
//! moment so lines gather, then writes them with one call. A full buffer
//! (a slow or stuck disk) drops lines, counted, instead of slowing traffic.
//! Files are reopened after SIGUSR1 so logrotate can move them away.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::thread::Thread;
use std::time::Duration;

use crate::stats::{Counter, Scope, Visitor};

/// Bytes a destination may hold unwritten before new lines are dropped
/// (some 16,000 lines of Envoy's default format).
const PENDING_LIMIT: usize = 4 << 20;

/// How long the writer lets lines gather after the first one. Envoy
/// flushes its log files once a second; lines reach the file sooner here,
/// at a cost of at most ten writes a second.
const GATHER: Duration = Duration::from_millis(100);

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
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    limit: usize,
    /// The writer, woken when lines arrive in an empty buffer.
    writer: Thread,
    /// Set when the last logger using this destination goes away.
    closed: AtomicBool,
}

#[derive(Debug, Default)]
struct Pending {
    text: String,
    lines: u64,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
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
            .unwrap_or_else(PoisonError::into_inner);
        open.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = open.get(&target).and_then(Weak::upgrade) {
            return Ok(s);
        }
        let out = Output::open(&target)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Arc<Shared>>(1);
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                if let Ok(shared) = rx.recv() {
                    write_loop(out, &shared);
                }
            })?;
        let sink = Arc::new(Sink::new(writer.thread().clone(), PENDING_LIMIT));
        // The writer holds the buffer it drains; only the sink closes it.
        let _ = tx.send(sink.shared.clone());
        open.insert(target, Arc::downgrade(&sink));
        Ok(sink)
    }

    fn new(writer: Thread, limit: usize) -> Sink {
        Sink {
            shared: Arc::new(Shared {
                pending: Mutex::default(),
                limit,
                writer,
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// Never blocks on the disk: a full buffer drops the line and counts it.
    pub fn send(&self, line: &str) {
        let mut p = self.shared.pending();
        if p.text.len() + line.len() > self.shared.limit {
            drop(p);
            stats().write_dropped.inc();
            return;
        }
        let wake = p.text.is_empty();
        p.text.push_str(line);
        p.lines += 1;
        drop(p);
        stats().write_buffered.inc();
        if wake {
            self.shared.writer.unpark();
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.writer.unpark();
    }
}

/// Reopens every file sink before its next write (log rotation).
pub fn reopen_all() {
    REOPEN.fetch_add(1, Ordering::Relaxed);
}

enum Output {
    File(PathBuf, File),
    Stdout(std::io::Stdout),
    Stderr(std::io::Stderr),
}

impl Output {
    fn open(t: &Target) -> std::io::Result<Output> {
        Ok(match t {
            Target::File(p) => Output::File(p.clone(), append(p)?),
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

/// Sleeps until lines arrive, lets more gather, then writes them all at
/// once; exits once the sink is gone and its last lines are written.
fn write_loop(mut out: Output, shared: &Shared) {
    let s = stats();
    let mut generation = REOPEN.load(Ordering::Relaxed);
    let mut batch = String::new();
    loop {
        let closed = shared.closed.load(Ordering::Acquire);
        if shared.pending().text.is_empty() {
            if closed {
                return;
            }
            std::thread::park();
            continue;
        }
        if !closed {
            std::thread::sleep(GATHER);
        }
        let lines = {
            let mut p = shared.pending();
            std::mem::swap(&mut p.text, &mut batch);
            std::mem::take(&mut p.lines)
        };
        let now = REOPEN.load(Ordering::Relaxed);
        if now != generation {
            generation = now;
            if let Output::File(p, f) = &mut out {
                match append(p) {
                    Ok(reopened) => *f = reopened,
                    Err(_) => s.reopen_failed.inc(),
                }
            }
        }
        let w = out.writer();
        match w.write_all(batch.as_bytes()).and_then(|()| w.flush()) {
            Ok(()) => s.write_completed.add(lines),
            Err(_) => s.write_failed.add(lines),
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that has stopped (a stuck disk, a pipe nobody reads) lets
    /// the buffer fill; further lines are dropped and counted, never waited
    /// for.
    #[test]
    fn a_full_buffer_drops_lines_without_blocking() {
        let sink = Sink::new(std::thread::current(), 16);
        let before = stats().write_dropped.get();
        for i in 0..5 {
            sink.send(&format!("line {i}\n"));
        }
        assert_eq!(sink.shared.pending().text, "line 0\nline 1\n");
        assert!(stats().write_dropped.get() - before >= 3);
    }

    /// Lines sent in a burst reach the file together, all of them, and the
    /// writer ends once its sink is dropped.
    #[test]
    fn lines_are_written_in_order_and_the_writer_ends_with_its_sink() {
        let path = std::env::temp_dir().join(format!("trellis-sink-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let sink = Sink::get(Target::File(path.clone())).expect("sink");
        for i in 0..100 {
            sink.send(&format!("line {i}\n"));
        }
        let shared = Arc::downgrade(&sink.shared);
        drop(sink);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while shared.strong_count() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(shared.strong_count(), 0, "the writer thread ended");
        let text = std::fs::read_to_string(&path).expect("log");
        let want: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let _ = std::fs::remove_file(&path);
        assert_eq!(text, want);
    }
}
