//! Logging: JSON lines on stdout, filtered by `RUST_LOG` (default `info`).
//!
//! Nothing secret is ever a field: handlers log ids and classes, never bodies, headers or query strings.
//!
//! Lines are written by one background thread: a worker formats its line and hands it over without waiting, so a slow
//! log pipe (a stalled collector, a full terminal) never stalls request handling. When [`QUEUE_LINES`] lines are
//! waiting, further lines are dropped and counted; the count is reported in the log once the pipe drains.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, OnceLock};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Lines waiting for the writer thread at most.
pub const QUEUE_LINES: usize = 16 * 1024;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A second init (tests build several apps in one process) is harmless: keep the first subscriber.
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true)
        .with_writer(NonBlocking::stdout())
        .try_init();
}

/// Writes whatever lines are still queued (call before the process exits).
pub fn flush() {
    if let Some(lines) = STDOUT.get() {
        lines.flush();
    }
}

static STDOUT: OnceLock<NonBlocking> = OnceLock::new();

/// A [`MakeWriter`] whose writes go to a bounded queue drained by one thread.
#[derive(Clone)]
pub struct NonBlocking {
    tx: SyncSender<Line>,
    dropped: Arc<AtomicU64>,
}

enum Line {
    Text(Vec<u8>),
    /// Answered once every line queued before it is written.
    Flush(SyncSender<()>),
}

impl NonBlocking {
    fn stdout() -> Self {
        STDOUT.get_or_init(|| Self::spawn(std::io::stdout(), QUEUE_LINES)).clone()
    }

    /// Drains the queue into `out` on a thread of its own.
    pub fn spawn(out: impl Write + Send + 'static, capacity: usize) -> Self {
        let (tx, rx) = sync_channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        let _ = std::thread::Builder::new().name("log-writer".into()).spawn(move || drain(rx, out, &counter));
        Self { tx, dropped }
    }

    pub fn flush(&self) {
        let (done, wait) = sync_channel(1);
        if self.tx.send(Line::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    /// Lines dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn drain(rx: Receiver<Line>, mut out: impl Write, dropped: &AtomicU64) {
    let mut reported = 0;
    while let Ok(line) = rx.recv() {
        match line {
            Line::Text(bytes) => {
                let _ = out.write_all(&bytes);
            }
            Line::Flush(done) => {
                let _ = out.flush();
                let _ = done.send(());
            }
        }
        let now = dropped.load(Ordering::Relaxed);
        if now != reported {
            let note = format!(
                "{{\"level\":\"WARN\",\"fields\":{{\"message\":\"log lines dropped: the log pipe was too slow\",\"dropped\":{}}},\"target\":\"reliablegpt::telemetry\"}}\n",
                now - reported
            );
            let _ = out.write_all(note.as_bytes());
            reported = now;
        }
    }
    let _ = out.flush();
}

/// One log line: the formatter writes the whole line into it, and it is queued without waiting.
pub struct LineWriter<'a>(&'a NonBlocking);

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.tx.try_send(Line::Text(buf.to_vec())) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                self.0.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for NonBlocking {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A sink that blocks until released, like a log pipe nobody reads.
    #[derive(Clone)]
    struct Stuck {
        gate: Arc<Mutex<()>>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_pipe_never_blocks_the_writer_and_drops_are_reported() {
        let sink = Stuck { gate: Arc::new(Mutex::new(())), got: Arc::new(Mutex::new(Vec::new())) };
        let closed = sink.gate.lock().unwrap();
        let logs = NonBlocking::spawn(sink.clone(), 4);
        // 100 lines into a queue of 4 behind a pipe that does not move: every write returns at once.
        for i in 0..100 {
            let mut w = logs.make_writer();
            w.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        assert!(logs.dropped() >= 100 - 4 - 1, "dropped {}", logs.dropped());
        drop(closed);
        logs.flush();
        let text = String::from_utf8(sink.got.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("line 0\n"), "{text}");
        assert!(text.contains("log lines dropped"), "{text}");
        assert!(text.contains(&format!("\"dropped\":{}", logs.dropped())), "{text}");
        // Once the pipe moves again, lines flow.
        logs.make_writer().write_all(b"after\n").unwrap();
        logs.flush();
        assert!(String::from_utf8(sink.got.lock().unwrap().clone()).unwrap().ends_with("after\n"));
    }
}
