//! Accept loops and connection lifetimes shared by inbound and outbound listeners.
//!
//! Owns the connection lifecycle: accept, hand each connection to a worker, and on
//! shutdown stop accepting and let each connection finish gracefully (`http_server`
//! serves HTTP on one). Knows nothing of TLS or policy.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::Shared;
use crate::config::{Limits, Timeouts};

/// Completes (with the reason) when the policy revokes a live connection (after a reload,
/// or once a rule's `expires` passes).
pub type Revoked = std::pin::Pin<Box<dyn Future<Output = String> + Send>>;

/// A revocation that never comes (outbound connections, which no policy judges).
pub fn never_revoked() -> Revoked {
    Box::pin(std::future::pending())
}

/// When a served connection must end even though its client is still using it.
#[derive(Clone, Copy, Debug)]
pub struct Lifetime {
    /// No request in flight (none started, or every response sent) for this long.
    pub idle: Duration,
    /// A hard end (max connection age, or the peer certificate's expiry).
    pub close_at: Option<Instant>,
    /// How long a connection asked to end on shutdown may finish its open requests (the
    /// listener's `drain`) before it is closed under them; other ends give at most
    /// [`Lifetime::END_DRAIN`] of it.
    pub drain: Duration,
}

impl Lifetime {
    /// The most a connection ended for its peer's sake (a revocation, the peer
    /// certificate's expiry, `max_connection_age`) may take to finish its open requests
    /// before it is closed under them: Envoy's default drain timeout. Without a bound a
    /// stream that never ends (a gRPC watch) would outlive the end for good.
    pub const END_DRAIN: Duration = Duration::from_secs(5);

    /// The lifetime of a connection opened now under a listener's settings, ending at
    /// the latest when `expires` (a peer certificate's notAfter, Unix seconds) passes.
    pub fn new(timeouts: &Timeouts, limits: &Limits, expires: Option<i64>) -> Self {
        let now = Instant::now();
        // The config bounds the age (a year), so the sum fits; were it ever not to, the
        // connection would have no age limit rather than panic.
        let age_limit = limits
            .max_connection_age
            .and_then(|age| now.checked_add(age.0));
        let expiry = expires.and_then(instant_of);
        Self {
            idle: timeouts.idle.0,
            close_at: age_limit.into_iter().chain(expiry).min(),
            drain: timeouts.drain.0,
        }
    }
}

/// The instant `not_after` (a certificate's notAfter, Unix seconds) passes: now if it has
/// passed already; `None` only if it lies too far ahead for an `Instant`.
pub fn instant_of(not_after: i64) -> Option<Instant> {
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let left = u64::try_from(not_after)
        .unwrap_or(0)
        .saturating_sub(unix_now);
    Instant::now().checked_add(Duration::from_secs(left))
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
    // The config allows at most `config::MAX_CONNECTIONS`; tokio panics above its own
    // ceiling, so never ask for more than that.
    let slots = Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Seconds;

    #[test]
    fn a_lifetime_past_what_an_instant_holds_has_no_hard_end_and_no_panic() {
        // The config refuses such an age; this is the second line behind it.
        let limits = Limits {
            max_connection_age: Some(Seconds(Duration::MAX)),
            ..Limits::default()
        };
        let lifetime = Lifetime::new(&Timeouts::default(), &limits, None);
        assert_eq!(lifetime.close_at, None);
        // The latest notAfter a certificate can carry fits: the certificate ends it.
        let lifetime = Lifetime::new(&Timeouts::default(), &limits, Some(i64::MAX));
        assert!(lifetime.close_at.is_some());
    }
}
