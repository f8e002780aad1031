//! The decision log: one JSON line per request (or TCP connection), as SPEC.md lays out.
//!
//! Lines are serialised on the request task into its worker's own queue (a buffer of
//! lines behind a lock only that worker and the writer take), and a writer thread writes
//! them out, so a slow disk never stalls a request. The writer wakes every 50 ms while
//! lines come (backing off to 400 ms when none do, so an idle sidecar hardly wakes), takes
//! every worker's lines and flushes: a line is on disk well within a second, and queuing
//! a line never wakes a thread (no syscall on the request path), allocates nothing in
//! the steady state and touches no memory another worker writes. [`DecisionLog::finish`]
//! writes out what is queued at once, for a drain. Each worker's queue holds at most
//! [`QUEUE_LINES`] lines and [`QUEUE_BYTES`] of them (a stalled sink and long paths must
//! not grow it without bound), and takes memory only for the lines waiting in it (a
//! preallocated ring of that size would keep 2 MiB resident in an idle sidecar).
//! [`DecisionLog::reopen`] (on SIGHUP) has the writer reopen a file's path before its next
//! pass: lines queued before go to the old file or the new one, never nowhere.

use std::cell::Cell;
use std::future::Future;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::Thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::OffsetDateTime;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use super::decision_line;
use super::sink::Sink;
use crate::per_worker::PerWorker;

/// Lines waiting for the writer at most, per worker; more are dropped and counted.
const QUEUE_LINES: usize = 65_536;
/// Bytes of lines waiting for the writer at most, per worker (one more line may pass it);
/// more are dropped and counted. About 48,000 lines of a usual size.
const QUEUE_BYTES: usize = 16 << 20;
/// A queue keeps at most this much room once written out (a burst's buffer is freed).
const KEPT_ROOM: usize = 64 * 1024;
/// The writer's pause while lines come.
const BUSY_PAUSE: Duration = Duration::from_millis(50);
/// The writer's longest pause, reached by doubling while no line comes.
const IDLE_PAUSE: Duration = Duration::from_millis(400);
/// The date and time of day of a timestamp, down to the second.
const SECOND: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");

/// One decision, borrowed from the request that produced it.
#[derive(Debug)]
pub struct DecisionRecord<'a> {
    /// Listener name.
    pub listener: &'a str,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// The client's SPIFFE ID.
    pub source: Option<&'a str>,
    /// The server's SPIFFE ID.
    pub destination: Option<&'a str>,
    /// HTTP method (null for TCP).
    pub method: Option<&'a str>,
    /// Normalised path (null for TCP).
    pub path: Option<&'a str>,
    /// `allow`, `deny` or `audit_deny`.
    pub decision: &'static str,
    /// Deciding rule, null for the default.
    pub rule: Option<&'a str>,
    /// Response status sent to the client.
    pub status: u16,
    /// Time from request to response headers, in milliseconds.
    pub duration_ms: f64,
    /// The `x-request-id` of the request.
    pub request_id: &'a str,
    /// Why, in words, for denials and errors.
    pub reason: Option<&'a str>,
    /// Version of the policy that judged the request.
    pub policy_version: Option<&'a str>,
    /// An `audit = true` rule that would have decided (dry run), if any.
    pub audit_rule: Option<&'a str>,
    /// The deciding rule is a break-glass rule (it has `expires`).
    pub break_glass: bool,
    /// TCP listeners: bytes from the client to the upstream.
    pub bytes_in: Option<u64>,
    /// TCP listeners: bytes from the upstream to the client.
    pub bytes_out: Option<u64>,
}

/// Where decision lines go; cheap to clone.
#[derive(Clone)]
pub struct DecisionLog {
    writer: Arc<Writer>,
    capacity: Capacity,
    dropped: Counter,
    write_errors: Counter,
    reopen_errors: Counter,
}

/// How much one worker's queue holds before lines are dropped.
#[derive(Clone, Copy)]
struct Capacity {
    lines: usize,
    bytes: usize,
}

/// Every worker's lines waiting for the writer.
#[derive(Default)]
struct Queues {
    workers: PerWorker<Mutex<Queue>>,
    closed: AtomicBool,
    /// Set: the writer reopens its file before its next pass.
    reopen: AtomicBool,
}

/// One worker's lines, back to back.
#[derive(Default)]
struct Queue {
    text: Vec<u8>,
    lines: usize,
}

/// The writer thread, told to write what is left and end by [`DecisionLog::finish`] or
/// when the last clone of the log is dropped.
struct Writer {
    /// The lines it writes.
    queues: Arc<Queues>,
    thread: Thread,
    /// Disconnected when the writer has ended.
    ended: Mutex<Receiver<()>>,
}

impl Writer {
    fn close(&self) {
        // Release: the writer that sees `closed` also sees every line queued before.
        self.queues.closed.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.close();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one cannot leave a queue (or the writer's end signal)
    // half-updated in a harmful way.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DecisionLog {
    /// Opens `stderr`, `stdout` or a file (appended to) and starts the writer thread.
    pub fn open(target: &str, registry: &mut Registry) -> io::Result<Self> {
        let sink = Sink::open(target)?;
        let capacity = Capacity {
            lines: QUEUE_LINES,
            bytes: QUEUE_BYTES,
        };
        let log = Self::to_sink(sink, capacity)?;
        registry.register(
            "idgate_decision_log_dropped",
            "Decision lines dropped because the writer fell behind",
            log.dropped.clone(),
        );
        registry.register(
            "idgate_decision_log_write_errors",
            "Writes of decision lines that failed (their lines are lost), e.g. on a full disk",
            log.write_errors.clone(),
        );
        registry.register(
            "idgate_decision_log_reopen_errors",
            "Reopens of the decision log's file (SIGHUP) that failed; the file open before is written on",
            log.reopen_errors.clone(),
        );
        Ok(log)
    }

    /// Starts the writer thread on `sink`, queuing at most `capacity` per worker.
    fn to_sink(sink: Sink, capacity: Capacity) -> io::Result<Self> {
        let queues = Arc::new(Queues::default());
        let writer_queues = queues.clone();
        let write_errors = Counter::default();
        let reopen_errors = Counter::default();
        let errors = (write_errors.clone(), reopen_errors.clone());
        let (alive, ended) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || {
                write_lines(&writer_queues, sink, &errors.0, &errors.1);
                drop(alive);
            })?
            .thread()
            .clone();
        Ok(Self {
            writer: Arc::new(Writer {
                queues,
                thread,
                ended: Mutex::new(ended),
            }),
            capacity,
            dropped: Counter::default(),
            write_errors,
            reopen_errors,
        })
    }

    /// Has the writer open the log's file path anew (appending) before its next pass, as
    /// logrotate's `postrotate` asks; stderr and stdout are left as they are.
    pub fn reopen(&self) {
        // Release: pairs with the writer's swap; nothing else rides on it.
        self.writer.queues.reopen.store(true, Ordering::Release);
        self.writer.thread.unpark();
    }

    /// Watches SIGHUP from now on and returns the task that reopens the log on each one
    /// until `shutdown`.
    pub fn reopen_on_hangup(
        &self,
        shutdown: CancellationToken,
    ) -> io::Result<impl Future<Output = ()> + Send + 'static> {
        let mut hangup = signal(SignalKind::hangup())?;
        let log = self.clone();
        Ok(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    received = hangup.recv() => match received {
                        Some(()) => log.reopen(),
                        None => return,
                    },
                }
            }
        })
    }

    /// Writes out every line queued so far and ends the writer (lines queued later are
    /// not written), waiting at most `timeout` for a slow sink; false if it took longer.
    pub fn finish(&self, timeout: Duration) -> bool {
        self.writer.close();
        let ended = lock(&self.writer.ended).recv_timeout(timeout);
        matches!(ended, Err(RecvTimeoutError::Disconnected))
    }

    /// Queues one line; never waits for the writer's I/O (a full queue drops the line and
    /// counts it).
    pub fn record(&self, record: &DecisionRecord<'_>) {
        let mut queue = lock(self.writer.queues.workers.local());
        if queue.lines >= self.capacity.lines || queue.text.len() >= self.capacity.bytes {
            drop(queue);
            self.dropped.inc();
            return;
        }
        let mut ts = [0u8; 24];
        let ts = timestamp(SystemTime::now(), &mut ts);
        decision_line::write(ts, record, &mut queue.text);
        queue.lines += 1;
    }
}

/// `now` as `2026-11-26T10:22:33.123Z` (UTC, milliseconds) in `out`. The part down to the
/// second is formatted once a second per thread; only the milliseconds are per line.
fn timestamp(now: SystemTime, out: &mut [u8; 24]) -> &str {
    thread_local! {
        static LAST_SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
    }
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (second, millis) = (since_epoch.as_secs(), since_epoch.subsec_millis());
    let prefix = LAST_SECOND.with(|last| {
        let (cached, prefix) = last.get();
        if cached == second {
            return prefix;
        }
        let mut prefix = [b'0'; 19];
        let whole = now - Duration::from_nanos(u64::from(since_epoch.subsec_nanos()));
        if let Ok(text) = OffsetDateTime::from(whole).format(SECOND) {
            if text.len() == prefix.len() {
                prefix.copy_from_slice(text.as_bytes());
                last.set((second, prefix));
            }
        }
        prefix
    });
    out[..19].copy_from_slice(&prefix);
    out[19] = b'.';
    out[20] = b'0' + (millis / 100) as u8;
    out[21] = b'0' + (millis / 10 % 10) as u8;
    out[22] = b'0' + (millis % 10) as u8;
    out[23] = b'Z';
    std::str::from_utf8(out).unwrap_or_default()
}

fn write_lines(queues: &Queues, mut sink: Sink, errors: &Counter, reopen_errors: &Counter) {
    // The writer polls instead of being woken: a request then never has to wake it, so
    // queuing a line costs no syscall. Each pass takes every worker's lines (swapping in
    // an empty buffer, so a worker waits for the lock at most that long) and writes them
    // out, so a line reaches its file within about one pause. Closing unparks it.
    let mut taken = Vec::new();
    let mut pause = BUSY_PAUSE;
    let mut failing = false;
    loop {
        std::thread::park_timeout(pause);
        // Every line of earlier passes is in the old file: this pass's go to the new one.
        if queues.reopen.swap(false, Ordering::AcqRel) {
            sink.reopen(reopen_errors);
        }
        // Read before taking: lines queued before the log was closed are taken.
        let closed = queues.closed.load(Ordering::Acquire);
        let mut wrote = false;
        let mut outcome = Ok(());
        for worker in queues.workers.iter() {
            {
                let mut queue = lock(worker);
                std::mem::swap(&mut queue.text, &mut taken);
                queue.lines = 0;
            }
            if !taken.is_empty() {
                wrote = true;
                count_failure(sink.write_all(&taken), &mut outcome, errors);
            }
            taken.clear();
            taken.shrink_to(KEPT_ROOM);
        }
        if wrote || closed {
            count_failure(sink.flush(), &mut outcome, errors);
            failing = report_change(outcome, failing);
        }
        if closed {
            return;
        }
        pause = if wrote {
            BUSY_PAUSE
        } else {
            (pause * 2).min(IDLE_PAUSE)
        };
    }
}

/// Counts a failed write (or flush) of the decision log and keeps its error as the pass's
/// outcome.
fn count_failure(result: io::Result<()>, outcome: &mut io::Result<()>, errors: &Counter) {
    if let Err(error) = result {
        errors.inc();
        *outcome = Err(error);
    }
}

/// Logs the first failed pass of a run and the first good one after it, so a full disk is
/// seen without an error per pass. Returns whether the log is failing now.
fn report_change(outcome: io::Result<()>, failing: bool) -> bool {
    match outcome {
        Ok(()) if failing => {
            tracing::info!("the decision log is written again");
            false
        }
        Ok(()) => false,
        Err(error) => {
            if !failing {
                tracing::error!(%error, "cannot write the decision log; its lines are lost until writes succeed again (idgate_decision_log_write_errors_total)");
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A sink that holds every write until the gate opens, then keeps what it got.
    struct Gated {
        gate: Arc<Mutex<()>>,
        /// Writes begun.
        writes: Arc<AtomicUsize>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            let _open = self.gate.lock().unwrap();
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Room for 4 lines per queue.
    const FOUR_LINES: Capacity = Capacity {
        lines: 4,
        bytes: usize::MAX,
    };

    /// A log (4 lines per queue) on a sink that never holds writes back, and what
    /// reaches the sink.
    fn log_on_open_sink() -> (DecisionLog, Arc<Mutex<Vec<u8>>>) {
        let written = Arc::new(Mutex::new(Vec::new()));
        let sink = Gated {
            gate: Arc::default(),
            writes: Arc::default(),
            written: written.clone(),
        };
        (
            DecisionLog::to_sink(Sink::writer(Box::new(sink)), FOUR_LINES).unwrap(),
            written,
        )
    }

    fn record(log: &DecisionLog, request_id: &str) {
        log.record(&DecisionRecord {
            listener: "api",
            direction: "inbound",
            source: None,
            destination: None,
            method: Some("GET"),
            path: Some("/"),
            decision: "allow",
            rule: None,
            status: 200,
            duration_ms: 0.1,
            request_id,
            reason: None,
            policy_version: None,
            audit_rule: None,
            break_glass: false,
            bytes_in: None,
            bytes_out: None,
        });
    }

    #[test]
    fn timestamps_match_a_full_format_across_seconds() {
        let full = format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        let start = UNIX_EPOCH + Duration::from_secs(1_795_687_937);
        for millis in [
            0, 1, 99, 500, 999, 1_000, 1_001, 61_999, 86_400_000, 86_400_007,
        ] {
            let now = start + Duration::from_millis(millis) + Duration::from_micros(456);
            let mut out = [0u8; 24];
            let expected = OffsetDateTime::from(now).format(full).unwrap();
            assert_eq!(timestamp(now, &mut out), expected);
        }
    }

    #[test]
    fn lines_of_every_worker_are_written_after_the_log_is_dropped() {
        let (log, written) = log_on_open_sink();
        record(&log, "main");
        std::thread::scope(|scope| {
            scope.spawn(|| {
                crate::per_worker::enter(1);
                record(&log, "worker");
            });
        });
        drop(log);
        let text = (0..100)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(20));
                String::from_utf8(written.lock().unwrap().clone()).unwrap()
            })
            .find(|text| text.lines().count() == 2);
        let text = text.expect("lines lost");
        assert!(text.contains("\"request_id\":\"main\""), "{text}");
        assert!(text.contains("\"request_id\":\"worker\""), "{text}");
    }

    #[test]
    fn finish_writes_the_queued_lines_at_once_even_from_an_idle_pause() {
        let (log, written) = log_on_open_sink();
        // Idle long enough for the writer's pause to have grown to IDLE_PAUSE.
        std::thread::sleep(BUSY_PAUSE * 2 + IDLE_PAUSE * 2);
        record(&log, "last");
        assert!(
            log.finish(IDLE_PAUSE / 2),
            "the writer waited out its pause"
        );
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert!(text.contains("\"request_id\":\"last\""), "{text}");
        assert!(log.finish(Duration::ZERO), "finishing twice");
    }

    /// A sink whose writes fail until `healthy` is set, then keeps what it gets.
    struct Flaky {
        healthy: Arc<AtomicBool>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if !self.healthy.load(Ordering::SeqCst) {
                return Err(io::Error::other("no space left on device"));
            }
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn failed_writes_are_counted_and_later_lines_still_reach_a_recovered_sink() {
        let healthy = Arc::new(AtomicBool::new(false));
        let written = Arc::new(Mutex::new(Vec::new()));
        let sink = Flaky {
            healthy: healthy.clone(),
            written: written.clone(),
        };
        let log = DecisionLog::to_sink(Sink::writer(Box::new(sink)), FOUR_LINES).unwrap();
        record(&log, "lost");
        let counted = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            log.write_errors.get() > 0
        });
        assert!(counted, "a failed write was not counted");
        healthy.store(true, Ordering::SeqCst);
        record(&log, "kept");
        assert!(log.finish(Duration::from_secs(5)));
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert!(text.contains("\"request_id\":\"kept\""), "{text}");
        assert!(!text.contains("\"request_id\":\"lost\""), "{text}");
        assert_eq!(log.write_errors.get(), 1, "one failed write");
    }

    #[test]
    fn a_full_queue_drops_and_counts_lines_and_the_rest_reach_the_sink() {
        let gate = Arc::new(Mutex::new(()));
        let written = Arc::new(Mutex::new(Vec::new()));
        let writes = Arc::new(AtomicUsize::new(0));
        let closed = gate.lock().unwrap();
        let sink = Gated {
            gate: gate.clone(),
            writes: writes.clone(),
            written: written.clone(),
        };
        let log = DecisionLog::to_sink(Sink::writer(Box::new(sink)), FOUR_LINES).unwrap();
        // The writer takes the first line and waits at the gate; 4 more fit the queue.
        record(&log, "r0");
        while writes.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        for i in 1..10 {
            record(&log, &format!("r{i}"));
        }
        let dropped = log.dropped.get();
        assert_eq!(dropped, 5);
        drop(closed);
        let kept = (0..100)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(20));
                let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
                text.lines().count()
            })
            .find(|&n| n as u64 + dropped == 10);
        assert_eq!(kept, Some((10 - dropped) as usize), "lines lost");
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("{\"ts\":\""), "{text}");
        assert!(text.contains("\"request_id\":\"r0\""), "{text}");
        // Draining frees room: new lines are queued again, not dropped.
        record(&log, "later");
        assert_eq!(log.dropped.get(), dropped);
    }

    #[test]
    fn a_queue_holds_a_bounded_number_of_bytes_whatever_the_lines() {
        let gate = Arc::new(Mutex::new(()));
        let writes = Arc::new(AtomicUsize::new(0));
        let closed = gate.lock().unwrap();
        let sink = Gated {
            gate: gate.clone(),
            writes: writes.clone(),
            written: Arc::default(),
        };
        let capacity = Capacity {
            lines: 1_000,
            bytes: 64 * 1024,
        };
        let log = DecisionLog::to_sink(Sink::writer(Box::new(sink)), capacity).unwrap();
        record(&log, "r0");
        while writes.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Lines of 16 KiB, as long request IDs or paths make them: 4 fill 64 KiB.
        let long = "x".repeat(16 * 1024);
        for _ in 0..10 {
            record(&log, &long);
        }
        assert_eq!(log.dropped.get(), 6, "the fifth line found the queue full");
        let queued = lock(log.writer.queues.workers.local()).text.len();
        assert!(queued < 64 * 1024 + 17 * 1024, "{queued} bytes queued");
        drop(closed);
    }
}
