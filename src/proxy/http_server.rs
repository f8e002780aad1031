//! Serving HTTP on one accepted connection: HTTP/1.1 or HTTP/2, as its TLS handshake
//! agreed or (plain connections) as its first bytes tell, under the same settings, until
//! its lifetime, a revocation or shutdown ends it, always gracefully.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::rt::bounds::Http2ServerConnExec;
use hyper::server::conn::{http1, http2};
use hyper::service::{service_fn, HttpService, Service};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::coalesce::FlushAtEnd;
use super::respond::Body;
use super::serve::{Lifetime, Revoked};
use crate::config::{Limits, Timeouts};

/// An error as hyper's services, bodies and version-detecting server box them.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// hyper refuses HTTP/1.1 read buffers smaller than this.
const MIN_H1_BUFFER: usize = 8192;

/// The settings both an HTTP/1.1 builder of hyper's and the auto-detecting one take.
macro_rules! http1_settings {
    ($builder:expr, $timeouts:expr, $limits:expr) => {
        $builder
            .timer(TokioTimer::new())
            .header_read_timeout($timeouts.header.0)
            .max_buf_size($limits.max_header_bytes.max(MIN_H1_BUFFER))
            .keep_alive(true)
    };
}

/// The settings both an HTTP/2 builder of hyper's and the auto-detecting one take.
macro_rules! http2_settings {
    ($builder:expr, $limits:expr) => {
        $builder
            .timer(TokioTimer::new())
            .max_concurrent_streams($limits.max_concurrent_streams)
            .max_frame_size(super::HTTP2_MAX_FRAME)
            .max_header_list_size(u32::try_from($limits.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(Duration::from_secs(30)))
    };
}

/// The HTTP server of one listener, with the same settings for every way a connection's
/// protocol comes to be known.
#[derive(Clone)]
pub struct HttpServer {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// For plain TCP connections, whose protocol only their first bytes tell.
    detecting: auto::Builder<TokioExecutor>,
}

impl HttpServer {
    /// A listener's HTTP server under its timeouts and limits.
    pub fn new(timeouts: &Timeouts, limits: &Limits) -> Self {
        let mut http1 = http1::Builder::new();
        http1_settings!(http1, timeouts, limits);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2_settings!(http2, limits);
        let mut detecting = auto::Builder::new(TokioExecutor::new());
        http1_settings!(detecting.http1(), timeouts, limits);
        http2_settings!(detecting.http2(), limits);
        Self {
            http1,
            http2,
            detecting,
        }
    }
}

/// The protocol a TLS connection speaks, as its handshake settled it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agreed {
    /// ALPN `http/1.1`, or no ALPN: HTTP/2 over TLS is only ever agreed by ALPN
    /// (RFC 9113, 3.2).
    Http1,
    /// ALPN `h2`.
    Http2,
}

impl Agreed {
    /// What the ALPN protocol the handshake chose (if any) says.
    pub fn from_alpn(protocol: Option<&[u8]>) -> Self {
        if protocol == Some(b"h2") {
            Self::Http2
        } else {
            Self::Http1
        }
    }
}

/// A byte stream a listener serves HTTP on.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// The request handler a listener serves each connection with.
pub trait Handler:
    Service<
        Request<Incoming>,
        Response = Response<Body>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Send
    + 'static
{
}
impl<S> Handler for S where
    S: Service<
            Request<Incoming>,
            Response = Response<Body>,
            Error: Into<BoxError>,
            Future: Send + 'static,
        > + Send
        + 'static
{
}

/// What ends a served connection: its lifetime, a revocation, or shutdown.
pub struct Ending<'a> {
    /// Idle timeout and hard end.
    pub lifetime: Lifetime,
    /// A policy reload that no longer admits the peer.
    pub revoked: Revoked,
    /// The process's shutdown.
    pub shutdown: &'a CancellationToken,
}

impl HttpServer {
    /// Serves HTTP on a TLS connection, in the protocol its handshake agreed on, until the
    /// client is done, the connection has had no new request for `lifetime.idle`, reached
    /// `lifetime.close_at`, was revoked, or shutdown asks it to end. Ending is always
    /// graceful: HTTP/1.1 finishes the response in flight and closes, HTTP/2 sends GOAWAY
    /// and lets open streams end.
    ///
    /// Going straight to the agreed protocol's server matters for memory: detecting it
    /// instead reads the first 24 bytes ahead of HTTP/1.1's parser, which then doubles its
    /// 8 KiB read buffer to hold 24 bytes more (about 11 KiB more resident per idle
    /// HTTP/1.1 connection).
    pub async fn serve_agreed(
        &self,
        agreed: Agreed,
        io: impl Io,
        service: impl Handler,
        ending: Ending<'_>,
    ) {
        let (service, watch) = Watch::new(service, ending);
        let io = TokioIo::new(io);
        match agreed {
            Agreed::Http1 => {
                let connection = self.http1.serve_connection(io, service).with_upgrades();
                watch.drive(FlushAtEnd::new(connection)).await;
            }
            Agreed::Http2 => {
                let connection = self.http2.serve_connection(io, service);
                watch.drive(FlushAtEnd::new(connection)).await;
            }
        }
    }

    /// [`HttpServer::serve_agreed`] for a plain TCP connection, which may speak HTTP/1.1
    /// or HTTP/2 with prior knowledge: its first bytes tell which.
    pub async fn serve_detected(&self, io: impl Io, service: impl Handler, ending: Ending<'_>) {
        let (service, watch) = Watch::new(service, ending);
        let connection = self
            .detecting
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        watch.drive(FlushAtEnd::new(connection)).await;
    }
}

/// A served HTTP connection that can be asked to finish the work in hand and end.
trait Graceful: Future<Output = Result<(), Self::Error>> {
    type Error: std::fmt::Display;

    fn end_gracefully(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for http1::UpgradeableConnection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<BoxError>,
{
    type Error = hyper::Error;

    fn end_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B> Graceful for http2::Connection<I, S, TokioExecutor>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<BoxError>,
    TokioExecutor: Http2ServerConnExec<S::Future, B>,
{
    type Error = hyper::Error;

    fn end_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B> Graceful for auto::UpgradeableConnection<'_, I, S, TokioExecutor>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: 'static,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<BoxError>,
    TokioExecutor: Http2ServerConnExec<S::Future, B>,
{
    type Error = BoxError;

    fn end_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// A served connection's [`Ending`], and when it last had a request.
struct Watch<'a> {
    started: Instant,
    /// Milliseconds from `started` to the latest request.
    last_request: Arc<AtomicU64>,
    ending: Ending<'a>,
}

impl<'a> Watch<'a> {
    /// Watches a connection that `service` (wrapped to note each request's time) serves.
    fn new<S: Handler>(
        service: S,
        ending: Ending<'a>,
    ) -> (
        impl Service<Request<Incoming>, Response = Response<Body>, Error = S::Error, Future = S::Future>,
        Self,
    ) {
        let started = Instant::now();
        let last_request = Arc::new(AtomicU64::new(0));
        let touched = last_request.clone();
        let service = service_fn(move |request| {
            touched.store(millis_since(started), Ordering::Relaxed);
            service.call(request)
        });
        let watch = Self {
            started,
            last_request,
            ending,
        };
        (service, watch)
    }

    /// Drives `connection` to its end, ending it gracefully when it must end. It comes in
    /// a `FlushAtEnd` (under which a `Coalesce` stream writes what one poll produced in
    /// one go), which boxes it: an argument keeps its slot in this future for the
    /// connection's life, and hyper's connections are kilobytes (2 KiB per connection).
    async fn drive<C: Graceful>(self, mut connection: FlushAtEnd<C>) {
        let Self {
            started,
            last_request,
            ending:
                Ending {
                    lifetime,
                    mut revoked,
                    shutdown,
                },
        } = self;
        let idle = lifetime.idle;
        let mut deadline = started + idle;
        let close_at = lifetime
            .close_at
            .unwrap_or(started + Duration::from_secs(100 * 365 * 86_400));
        let mut ending = false;
        let result = loop {
            tokio::select! {
                result = &mut connection => break result,
                _ = shutdown.cancelled(), if !ending => {
                    connection.inner().end_gracefully();
                    ending = true;
                }
                reason = &mut revoked, if !ending => {
                    tracing::info!("closing connection: {reason}");
                    connection.inner().end_gracefully();
                    ending = true;
                }
                _ = tokio::time::sleep_until(close_at.into()), if !ending => {
                    tracing::info!("closing connection: maximum age or peer certificate expiry reached");
                    connection.inner().end_gracefully();
                    ending = true;
                }
                _ = tokio::time::sleep_until(deadline.into()), if !ending => {
                    let last = started + Duration::from_millis(last_request.load(Ordering::Relaxed));
                    if last + idle <= Instant::now() {
                        tracing::debug!(?idle, "closing idle connection");
                        connection.inner().end_gracefully();
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
}

fn millis_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}
