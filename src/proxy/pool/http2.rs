//! The pool's HTTP/2 connections to one upstream: as many as the requests in flight need,
//! each carrying no more at once than its peer allows.
//!
//! A connection counts its requests in flight (a [`StreamSlot`] each, given back when the
//! response body ends or is dropped, or the request fails). A request takes the first
//! connection with a free stream, so extra connections drain and idle out once the load
//! falls. Owns no policy on retries: `resend` decides those.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use hyper::client::conn::http2;
use hyper::rt::Executor;
use hyper_util::rt::{TokioIo, TokioTimer};

use super::resend::SendBody;
use super::{Peer, MAX_RESPONSE_HEAD};
use crate::proxy::coalesce::FlushingExecutor;
use crate::proxy::stream::Stream;

/// Streams a new connection may open before the peer's SETTINGS say how many it allows,
/// when no earlier connection of the pool has told: RFC 9113 5.1.2 recommends that peers
/// allow at least 100 (hyper's default too). Later connections start from the limit the
/// peer advertised on the pool's last one, so a burst on them never exceeds it.
pub(super) const DEFAULT_MAX_STREAMS: usize = 100;

/// One HTTP/2 connection of the pool.
pub(super) struct Conn {
    sender: http2::SendRequest<SendBody>,
    peer: Peer,
    /// When the peer's certificate expires: no request is sent on it after that.
    expires: Option<Instant>,
    used: Instant,
    streams: Arc<Streams>,
}

/// What a connection's requests share: how many are in flight, and how many the peer
/// allows at once.
#[derive(Debug)]
struct Streams {
    in_flight: AtomicUsize,
    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS as h2 knows it, published by the task
    /// that drives the connection (before the SETTINGS arrive: the initial guess).
    limit: AtomicUsize,
    /// A response has arrived: the peer's SETTINGS, its first frame, came before it.
    settled: AtomicBool,
    /// Wakes the task that drives the connection (hyper polls it only when a request
    /// arrives), so it publishes the limit the SETTINGS set.
    driver: AtomicWaker,
}

/// One request's stream on an HTTP/2 connection, given back when dropped.
#[derive(Debug)]
pub struct StreamSlot(Arc<Streams>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Release);
    }
}

impl StreamSlot {
    /// True once a response has arrived on the connection, so its peer's limit is known
    /// and nothing sent on it within that limit is refused.
    pub(super) fn settled(&self) -> bool {
        self.0.settled.load(Ordering::Relaxed)
    }

    /// Notes that the peer has answered on the connection (a response, or a refusal), so
    /// its SETTINGS have arrived: the limit they set is published at once.
    pub(super) fn settle(&self) {
        if !self.settled() {
            self.0.settled.store(true, Ordering::Relaxed);
            self.0.driver.wake();
        }
    }
}

/// A connection's sender, the identity its peer proved, and the request's stream on it.
pub(super) struct Checkout2 {
    pub sender: http2::SendRequest<SendBody>,
    pub peer: Peer,
    pub slot: StreamSlot,
}

/// The pool's HTTP/2 connections, preferred first.
#[derive(Default)]
pub(super) struct Conns {
    conns: Vec<Conn>,
}

impl Conns {
    /// A stream on the first live connection with one free; forgets the connections that
    /// have closed or whose peer's certificate has expired (requests in flight on them
    /// keep their senders and finish).
    pub fn checkout(&mut self) -> Option<Checkout2> {
        let now = Instant::now();
        self.conns
            .retain(|c| !c.sender.is_closed() && c.expires.is_none_or(|at| now < at));
        let conn = self.conns.iter_mut().find(|c| {
            let streams = &c.streams;
            // Only checkouts (under the pool's lock) add: the count cannot rise meanwhile.
            streams.in_flight.load(Ordering::Acquire) < streams.limit.load(Ordering::Relaxed)
        })?;
        conn.streams.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.used = now;
        Some(Checkout2 {
            sender: conn.sender.clone(),
            peer: conn.peer.clone(),
            slot: StreamSlot(conn.streams.clone()),
        })
    }

    /// Adds a newly opened connection, preferred last.
    pub fn push(&mut self, conn: Conn) {
        self.conns.push(conn);
    }

    /// Stops handing out the connection `slot` is on (it gave a request back unsent).
    pub fn forget(&mut self, slot: &StreamSlot) {
        self.conns.retain(|c| !Arc::ptr_eq(&c.streams, &slot.0));
    }

    /// Closes connections unused for `timeout`, and of those with nothing in flight and
    /// unused for `spare_after`, all but the first: one idle spare is kept.
    pub fn close_idle(&mut self, timeout: Duration, spare_after: Duration) {
        let mut spare_kept = false;
        self.conns.retain(|c| {
            let unused = c.used.elapsed();
            if unused >= timeout {
                return false;
            }
            if c.streams.in_flight.load(Ordering::Acquire) > 0 {
                return true;
            }
            let keep = !spare_kept || unused < spare_after;
            spare_kept = true;
            keep
        });
    }
}

/// Opens an HTTP/2 connection over `stream`, starts the task that drives it, adds it to
/// `conns` through `add` and returns a stream on it for the caller's request. `learned`
/// is the limit the peer advertised last on this pool: the connection starts from it
/// and publishes its own there.
pub(super) async fn open(
    stream: Stream,
    peer: Peer,
    learned: &Arc<AtomicUsize>,
    add: impl FnOnce(Conn),
) -> hyper::Result<Checkout2> {
    let expires = peer
        .as_ref()
        .and_then(|p| crate::proxy::serve::instant_of(p.not_after));
    // A peer may advertise 0 for a while; a new connection still gets its one request out.
    let initial = learned.load(Ordering::Relaxed).max(1);
    let (sender, connection) = http2::Builder::new(FlushingExecutor)
        .timer(TokioTimer::new())
        .initial_max_send_streams(initial)
        .max_frame_size(crate::proxy::HTTP2_MAX_FRAME)
        .max_header_list_size(MAX_RESPONSE_HEAD)
        .handshake(TokioIo::new(stream))
        .await?;
    let streams = Arc::new(Streams {
        in_flight: AtomicUsize::new(1),
        limit: AtomicUsize::new(initial),
        settled: AtomicBool::new(false),
        driver: AtomicWaker::new(),
    });
    FlushingExecutor.execute(drive(connection, streams.clone(), learned.clone()));
    add(Conn {
        sender: sender.clone(),
        peer: peer.clone(),
        expires,
        used: Instant::now(),
        streams: streams.clone(),
    });
    Ok(Checkout2 {
        sender,
        peer,
        slot: StreamSlot(streams),
    })
}

type Connection = http2::Connection<TokioIo<Stream>, SendBody, FlushingExecutor>;

/// Runs `connection` to its end, publishing the peer's limit on concurrent streams (hyper
/// tells it only here) whenever it changes: seen when a request arrives, or when the
/// connection's first answer wakes it.
async fn drive(mut connection: Connection, streams: Arc<Streams>, learned: Arc<AtomicUsize>) {
    let mut published = streams.limit.load(Ordering::Relaxed);
    let ended = std::future::poll_fn(|cx| {
        streams.driver.register(cx.waker());
        let polled = Pin::new(&mut connection).poll(cx);
        let limit = connection.current_max_send_streams();
        if limit != published {
            published = limit;
            streams.limit.store(limit, Ordering::Relaxed);
            learned.store(limit, Ordering::Relaxed);
        }
        polled
    })
    .await;
    if let Err(error) = ended {
        tracing::debug!(%error, "upstream HTTP/2 connection ended");
    }
}
