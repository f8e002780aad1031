//! The decision log: one JSON line per request (or TCP connection), as SPEC.md lays out.
//!
//! Lines are serialised on the request task and handed to a writer thread through a
//! bounded channel, so a slow disk never stalls a request. The writer wakes every 50 ms,
//! drains the queue and flushes: a line is on disk well within a second, and queuing a
//! line never wakes a thread (no syscall on the request path).

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde::Serialize;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

const QUEUE_LINES: usize = 65_536;
const TIMESTAMP: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// One decision, borrowed from the request that produced it.
#[derive(Debug, Serialize)]
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// Version of the policy that judged the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<&'a str>,
    /// An `audit = true` rule that would have decided (dry run), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_rule: Option<&'a str>,
    /// The deciding rule is a break-glass rule (it has `expires`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
    /// TCP listeners: bytes from the client to the upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    /// TCP listeners: bytes from the upstream to the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
}

#[derive(Serialize)]
struct Line<'a> {
    ts: &'a str,
    #[serde(flatten)]
    record: &'a DecisionRecord<'a>,
}

/// Where decision lines go; cheap to clone.
#[derive(Clone)]
pub struct DecisionLog {
    queue: SyncSender<Vec<u8>>,
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
        let (queue, lines) = mpsc::sync_channel(QUEUE_LINES);
        std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || write_lines(lines, sink))?;
        let dropped = Counter::default();
        registry.register(
            "idgate_decision_log_dropped",
            "Decision lines dropped because the writer fell behind",
            dropped.clone(),
        );
        Ok(Self { queue, dropped })
    }

    /// Queues one line; never blocks (a full queue drops the line and counts it).
    pub fn record(&self, record: &DecisionRecord<'_>) {
        let ts = OffsetDateTime::from(SystemTime::now())
            .format(TIMESTAMP)
            .unwrap_or_default();
        let mut line = Vec::with_capacity(320);
        if serde_json::to_writer(&mut line, &Line { ts: &ts, record }).is_err() {
            return;
        }
        line.push(b'\n');
        if let Err(TrySendError::Full(_)) = self.queue.try_send(line) {
            self.dropped.inc();
        }
    }
}

fn write_lines(lines: Receiver<Vec<u8>>, sink: Box<dyn Write + Send>) {
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
