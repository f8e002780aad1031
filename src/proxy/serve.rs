//! Accept loops and HTTP connection serving shared by inbound and outbound listeners.
//!
//! Owns the connection lifecycle: accept, serve HTTP/1.1 or HTTP/2, and on shutdown
//! stop accepting and let each connection finish gracefully. Knows nothing of TLS or policy.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::{service_fn, Service};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::respond::Body;
use crate::config::Timeouts;

/// HTTP/2 streams a client may open at once on one connection.
const MAX_CONCURRENT_STREAMS: u32 = 256;

/// The HTTP server settings of one listener.
pub fn http_builder(timeouts: &Timeouts) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header.0)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

/// Serves HTTP on one connection until the client is done, the connection has had no new
/// request for `idle`, or shutdown asks it to end. Ending is always graceful: HTTP/1.1
/// finishes the response in flight and closes, HTTP/2 sends GOAWAY and lets open streams end.
pub async fn serve_http<I, S>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    idle: Duration,
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
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut deadline = started + idle;
    let mut ending = false;
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            _ = shutdown.cancelled(), if !ending => {
                connection.as_mut().graceful_shutdown();
                ending = true;
            }
            _ = tokio::time::sleep_until(deadline.into()), if !ending => {
                let last = started + Duration::from_millis(last_request.load(Ordering::Relaxed));
                if last + idle <= Instant::now() {
                    tracing::debug!(?idle, "closing idle connection");
                    connection.as_mut().graceful_shutdown();
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

/// Accepts connections until shutdown, spawning `handle` for each on the tracker.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    name: &str,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tasks.spawn(handle(stream, peer));
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
