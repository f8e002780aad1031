//! The decision log: one JSON line per request (or TCP connection), as SPEC.md lays out.
//!
//! Lines are serialised on the request task and handed to a writer thread through a
//! queue, so a slow disk never stalls a request. The writer wakes every 50 ms, drains the
//! queue and flushes: a line is on disk well within a second, and queuing a line never
//! wakes a thread (no syscall on the request path). The queue holds at most
//! [`QUEUE_LINES`] lines and takes memory only for the lines waiting in it (a
//! preallocated ring of that size would keep 2 MiB resident in an idle sidecar).

use std::cell::Cell;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

use super::decision_line;

/// Lines waiting for the writer at most; more are dropped and counted.
const QUEUE_LINES: usize = 65_536;
/// Room for a typical line (320-380 bytes with SPIFFE IDs and a request ID), so
/// serialising one costs a single allocation.
const LINE_CAPACITY: usize = 512;
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
    queue: Sender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    dropped: Counter,
}

impl DecisionLog {
    /// Opens `stderr`, `stdout` or a file (appended to) and starts the writer thread.
    pub fn open(target: &str, registry: &mut Registry) -> io::Result<Self> {
        let sink: Box<dyn Write + Send> = match target {
            "stderr" => Box::new(io::stderr()),
            "stdout" => Box::new(io::stdout()),
            path => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("cannot open decision log {path}: {e}"))
                    })?,
            ),
        };
        let log = Self::to_sink(sink, QUEUE_LINES)?;
        registry.register(
            "idgate_decision_log_dropped",
            "Decision lines dropped because the writer fell behind",
            log.dropped.clone(),
        );
        Ok(log)
    }

    /// Starts the writer thread on `sink`, queuing at most `capacity` lines.
    fn to_sink(sink: Box<dyn Write + Send>, capacity: usize) -> io::Result<Self> {
        let (queue, lines) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let writer_count = queued.clone();
        std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || write_lines(lines, &writer_count, sink))?;
        Ok(Self {
            queue,
            queued,
            capacity,
            dropped: Counter::default(),
        })
    }

    /// Queues one line; never blocks (a full queue drops the line and counts it).
    pub fn record(&self, record: &DecisionRecord<'_>) {
        let mut ts = [0u8; 24];
        let ts = timestamp(SystemTime::now(), &mut ts);
        let mut line = Vec::with_capacity(LINE_CAPACITY);
        decision_line::write(ts, record, &mut line);
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.dropped.inc();
            return;
        }
        if self.queue.send(line).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
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

fn write_lines(lines: Receiver<Vec<u8>>, queued: &AtomicUsize, sink: Box<dyn Write + Send>) {
    // The writer polls instead of blocking in `recv`: a sender then never has to wake it,
    // so queuing a line costs no syscall on the request path. Each pass drains the queue
    // and flushes, so a line reaches its file within about one POLL.
    const POLL: Duration = Duration::from_millis(50);
    let mut out = BufWriter::with_capacity(64 * 1024, sink);
    loop {
        std::thread::sleep(POLL);
        let mut open = true;
        loop {
            match lines.try_recv() {
                Ok(line) => {
                    queued.fetch_sub(1, Ordering::Relaxed);
                    let _ = out.write_all(&line);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if !out.buffer().is_empty() {
            let _ = out.flush();
        }
        if !open {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A sink that holds every write until the gate opens, then keeps what it got.
    struct Gated {
        gate: Arc<Mutex<()>>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
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
    fn a_full_queue_drops_and_counts_lines_and_the_rest_reach_the_sink() {
        let gate = Arc::new(Mutex::new(()));
        let written = Arc::new(Mutex::new(Vec::new()));
        let closed = gate.lock().unwrap();
        let sink = Gated {
            gate: gate.clone(),
            written: written.clone(),
        };
        let log = DecisionLog::to_sink(Box::new(BufWriter::with_capacity(0, sink)), 4).unwrap();
        for i in 0..10 {
            record(&log, &format!("r{i}"));
        }
        // The writer may have taken one line off the queue (it then waits at the gate).
        let dropped = log.dropped.get();
        assert!((5..=6).contains(&dropped), "dropped {dropped}");
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
}
