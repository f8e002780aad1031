//! Accept loops and HTTP connection serving shared by inbound and outbound listeners.
//!
//! Owns the connection lifecycle: accept, serve HTTP/1.1 or HTTP/2, and on shutdown
//! stop accepting and let each connection finish gracefully. Knows nothing of TLS or policy.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::{service_fn, Service};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::coalesce::FlushAtEnd;
use super::respond::Body;
use super::Shared;
use crate::config::{Limits, Timeouts};

/// hyper refuses HTTP/1.1 read buffers smaller than this.
const MIN_H1_BUFFER: usize = 8192;

/// The HTTP server settings of one listener.
pub fn http_builder(timeouts: &Timeouts, limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header.0)
        .max_buf_size(limits.max_header_bytes.max(MIN_H1_BUFFER))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_frame_size(super::HTTP2_MAX_FRAME)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

/// Completes (with the reason) when a policy reload revokes a live connection.
pub type Revoked = std::pin::Pin<Box<dyn Future<Output = String> + Send>>;

/// A revocation that never comes (outbound connections, which no policy judges).
pub fn never_revoked() -> Revoked {
    Box::pin(std::future::pending())
}

/// When a served connection must end even though its client is still using it.
#[derive(Clone, Copy, Debug)]
pub struct Lifetime {
    /// No new request for this long.
    pub idle: Duration,
    /// A hard end (max connection age, or the peer certificate's expiry).
    pub close_at: Option<Instant>,
}

impl Lifetime {
    /// The lifetime of a connection opened now under a listener's settings, ending at
    /// the latest when `expires` (a peer certificate's notAfter, Unix seconds) passes.
    pub fn new(timeouts: &Timeouts, limits: &Limits, expires: Option<i64>) -> Self {
        let now = Instant::now();
        let age_limit = limits.max_connection_age.map(|age| now + age.0);
        let expiry = expires.map(|not_after| {
            let unix_now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let left = u64::try_from(not_after)
                .unwrap_or(0)
                .saturating_sub(unix_now);
            now + Duration::from_secs(left)
        });
        Self {
            idle: timeouts.idle.0,
            close_at: age_limit.into_iter().chain(expiry).min(),
        }
    }
}

/// Serves HTTP on one connection until the client is done, the connection has had no new
/// request for `lifetime.idle`, reached `lifetime.close_at`, or shutdown asks it to end.
/// Ending is always graceful: HTTP/1.1 finishes the response in flight and closes,
/// HTTP/2 sends GOAWAY and lets open streams end.
pub async fn serve_http<I, S>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    lifetime: Lifetime,
    revoked: Revoked,
    shutdown: &CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    let last_request = Arc::new(AtomicU64::new(0));
    let touched = last_request.clone();
    let service = service_fn(move |request| {
        touched.store(millis_since(started), Ordering::Relaxed);
        service.call(request)
    });
    // Under FlushAtEnd, a `Coalesce` stream writes what one poll produced in one go.
    let mut connection =
        FlushAtEnd::new(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
    let idle = lifetime.idle;
    let mut deadline = started + idle;
    let close_at = lifetime
        .close_at
        .unwrap_or(started + Duration::from_secs(100 * 365 * 86_400));
    let mut ending = false;
    let mut revoked = revoked;
    let result = loop {
        tokio::select! {
            result = &mut connection => break result,
            _ = shutdown.cancelled(), if !ending => {
                connection.inner().graceful_shutdown();
                ending = true;
            }
            reason = &mut revoked, if !ending => {
                tracing::info!("closing connection: {reason}");
                connection.inner().graceful_shutdown();
                ending = true;
            }
            _ = tokio::time::sleep_until(close_at.into()), if !ending => {
                tracing::info!("closing connection: maximum age or peer certificate expiry reached");
                connection.inner().graceful_shutdown();
                ending = true;
            }
            _ = tokio::time::sleep_until(deadline.into()), if !ending => {
                let last = started + Duration::from_millis(last_request.load(Ordering::Relaxed));
                if last + idle <= Instant::now() {
                    tracing::debug!(?idle, "closing idle connection");
                    connection.inner().graceful_shutdown();
                    ending = true;
                } else {
                    deadline = last + idle;
                }
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "connection ended with an error");
    }
}

fn millis_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Accepts connections until shutdown, spawning `handle` for each on the tracker, on
/// the least busy worker. Beyond `max_connections` open at once, a new connection is closed
/// straight away (the client sees a clean close, not a hang) and counted as refused.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    name: &str,
    max_connections: usize,
    shared: &Shared,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handle = Arc::new(handle);
    let listener_name: Arc<str> = Arc::from(name);
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shared.shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    shared.requests.refused(name);
                    tracing::warn!(listener = name, %peer, max_connections, "connection refused: too many open connections");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let place = shared.workers.assign();
                let worker = place.worker;
                // Held while the connection lives.
                let held = (slot, place);
                if worker == 0 {
                    // `map`, not an async block: a block would keep the moved-in future
                    // and the future it awaits side by side, twice the task's size.
                    let connection = handle(stream, peer).map(move |()| drop(held));
                    shared.tasks.spawn(connection);
                } else {
                    hand_over(
                        shared,
                        &listener_name,
                        worker,
                        stream,
                        peer,
                        handle.clone(),
                        held,
                    );
                }
            }
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = name, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::debug!(listener = name, "stopped accepting");
}

/// Serves a connection on another worker's thread. The socket moves to that worker's I/O
/// driver, so its readiness wakes that thread and no other.
fn hand_over<F, Fut>(
    shared: &Shared,
    listener: &Arc<str>,
    worker: usize,
    stream: TcpStream,
    peer: SocketAddr,
    handle: Arc<F>,
    held: impl Send + 'static,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(error) => {
            tracing::warn!(%listener, %peer, %error, "cannot hand the connection to a worker");
            return;
        }
    };
    let listener = listener.clone();
    let connection = async move {
        match TcpStream::from_std(stream) {
            Ok(stream) => handle(stream, peer).await,
            Err(error) => {
                tracing::warn!(%listener, %peer, %error, "worker cannot take the connection")
            }
        }
        drop(held);
    };
    shared
        .workers
        .spawn(worker, shared.tasks.track_future(connection));
}
