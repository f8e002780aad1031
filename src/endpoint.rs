//! Serving idgate's own small HTTP endpoints (the admin listener, the injection webhook):
//! few clients, small requests, and no way for a client to exhaust the process with
//! them. Each endpoint holds a bounded number of connections (the kernel's backlog keeps
//! the rest waiting), gives a client [`HEAD_TIMEOUT`] to send each request head and a
//! connection [`CONNECTION_DEADLINE`] in all, and backs off when accepting fails (out of
//! file descriptors) instead of spinning.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::rt::{Read, Write};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a client has to send a request head (HTTP/1.1).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection lasts at most, requests and idle time together; then it is
/// closed gracefully (a request in flight finishes, within [`CLOSING_GRACE`]).
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(60);
/// How long a connection closing at its deadline has to finish what it is doing.
pub const CLOSING_GRACE: Duration = Duration::from_secs(5);
/// The pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// One endpoint's connection slots and HTTP settings.
pub struct Endpoint {
    name: &'static str,
    http: auto::Builder<TokioExecutor>,
    slots: Arc<Semaphore>,
    deadline: Duration,
}

/// A connection's place among its endpoint's slots, freed when this is dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Endpoint {
    /// An endpoint named `name` in logs, serving at most `max_connections` at once.
    pub fn new(name: &'static str, max_connections: usize) -> Self {
        Self::with_timeouts(name, max_connections, HEAD_TIMEOUT, CONNECTION_DEADLINE)
    }

    fn with_timeouts(
        name: &'static str,
        max_connections: usize,
        head_timeout: Duration,
        deadline: Duration,
    ) -> Self {
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(head_timeout);
        http.http2().timer(TokioTimer::new());
        Self {
            name,
            http,
            slots: Arc::new(Semaphore::new(max_connections)),
            deadline,
        }
    }

    /// The next connection, once a slot is free. Cancel-safe.
    pub async fn accept(&self, listener: &TcpListener) -> (TcpStream, Slot) {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match listener.accept().await {
                Ok((stream, _)) => return (stream, Slot { _permit: slot }),
                Err(error) => {
                    tracing::warn!(endpoint = self.name, %error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }

    /// Serves `io` (an accepted stream, or TLS over it) with `respond` until the client is
    /// done or the connection's deadline; its `slot` is held until then.
    pub async fn serve<I, F, Fut>(&self, io: I, slot: Slot, respond: F)
    where
        I: Read + Write + Unpin + Send + 'static,
        F: Fn(Request<Incoming>) -> Fut + Send + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let _held = slot;
        let service = service_fn(move |request| {
            let answer = respond(request);
            async move { Ok::<_, Infallible>(answer.await) }
        });
        let mut connection = pin!(self.http.serve_connection(io, service));
        let served = tokio::time::timeout(self.deadline, connection.as_mut()).await;
        if served.is_err() {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSING_GRACE, connection).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    /// Serves `endpoint` on a loopback port, answering every request with 200.
    async fn start(endpoint: Endpoint) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let endpoint = Arc::new(endpoint);
        tokio::spawn(async move {
            loop {
                let (stream, slot) = endpoint.accept(&listener).await;
                let endpoint = endpoint.clone();
                tokio::spawn(async move {
                    let ok = |_| std::future::ready(Response::new(Full::new(Bytes::from("ok"))));
                    let io = hyper_util::rt::TokioIo::new(stream);
                    endpoint.serve(io, slot, ok).await;
                });
            }
        });
        addr
    }

    /// Reads until the server closes the connection, at most for `limit`; what it sent.
    async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
        let mut seen = Vec::new();
        tokio::time::timeout(limit, stream.read_to_end(&mut seen))
            .await
            .ok()?
            .ok()?;
        Some(String::from_utf8_lossy(&seen).into_owned())
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_head_is_closed() {
        let long = Duration::from_secs(60);
        let endpoint = Endpoint::with_timeouts("test", 4, Duration::from_millis(200), long);
        let addr = start(endpoint).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let closed = read_until_closed(&mut slow, Duration::from_secs(5)).await;
        assert!(closed.is_some(), "still open after 5 s");
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_for_a_free_slot() {
        let long = Duration::from_secs(60);
        let addr = start(Endpoint::with_timeouts("test", 2, long, long)).await;
        let first = TcpStream::connect(addr).await.unwrap();
        let _second = TcpStream::connect(addr).await.unwrap();
        let mut third = TcpStream::connect(addr).await.unwrap();
        third.write_all(REQUEST).await.unwrap();
        let mut head = [0; 12];
        let waited = tokio::time::timeout(Duration::from_millis(500), third.read_exact(&mut head));
        assert!(waited.await.is_err(), "a third connection was served");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), third.read_exact(&mut head))
            .await
            .expect("served once a slot was free")
            .unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
    }

    #[tokio::test]
    async fn a_connection_ends_at_its_deadline() {
        let long = Duration::from_secs(60);
        let deadline = Duration::from_millis(300);
        let addr = start(Endpoint::with_timeouts("test", 4, long, deadline)).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(REQUEST).await.unwrap();
        let answered = read_until_closed(&mut client, Duration::from_secs(5))
            .await
            .expect("closed after its deadline, kept alive before");
        assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    }
}
