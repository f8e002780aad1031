//! Serving HTTP on one accepted connection: HTTP/1.1 or HTTP/2, as its TLS handshake
//! agreed or (plain connections) as its first bytes tell, under the same settings, until
//! its lifetime, a revocation or shutdown ends it: gracefully, then, once a bounded drain
//! has passed, by closing it under the requests still open.

use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryFutureExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::rt::bounds::Http2ServerConnExec;
use hyper::server::conn::{http1, http2};
use hyper::service::{service_fn, HttpService, Service};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, Interest};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::coalesce::FlushAtEnd;
use super::in_flight::{Activity, CountedBody, Cut, InFlight};
use super::respond::Body;
use super::serve::{Lifetime, Revoked};
use crate::config::{Limits, Timeouts, MAX_DURATION};

/// An error as hyper's services and bodies box them.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// hyper refuses HTTP/1.1 read buffers smaller than this.
const MIN_H1_BUFFER: usize = 8192;

/// The HTTP server of one listener: the same settings whichever way a connection's
/// protocol comes to be known.
#[derive(Clone)]
pub struct HttpServer {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// Tracks each HTTP/2 request (a stream runs as a task of its own), so that a drain
    /// waits until a request cut with its connection has been dropped and logged.
    streams: TaskTracker,
}

impl HttpServer {
    /// A listener's HTTP server under its timeouts and limits, its HTTP/2 requests tracked
    /// by `tasks`.
    pub fn new(timeouts: &Timeouts, limits: &Limits, tasks: &TaskTracker) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // hyper adds it to the current time, which panics on overflow; the config
            // already refuses anything longer.
            .header_read_timeout(timeouts.header.0.min(MAX_DURATION))
            .max_buf_size(limits.max_header_bytes.max(MIN_H1_BUFFER))
            .keep_alive(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_frame_size(super::HTTP2_MAX_FRAME)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(Duration::from_secs(30)));
        Self {
            http1,
            http2,
            streams: tasks.clone(),
        }
    }
}

/// The protocol a connection speaks, as its TLS handshake or its first bytes settled it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agreed {
    /// ALPN `http/1.1`, or no ALPN: HTTP/2 over TLS is only ever agreed by ALPN
    /// (RFC 9113, 3.2). A plain connection: anything but the HTTP/2 preface.
    Http1,
    /// ALPN `h2`. A plain connection: the HTTP/2 preface (prior knowledge).
    Http2,
}

/// What an HTTP/2 client with prior knowledge sends first (RFC 9113, 3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Agreed {
    /// What the ALPN protocol the handshake chose (if any) says.
    pub fn from_alpn(protocol: Option<&[u8]>) -> Self {
        if protocol == Some(b"h2") {
            Self::Http2
        } else {
            Self::Http1
        }
    }

    /// What a plain connection's first bytes say, if they are enough to tell (none, or
    /// the start of the HTTP/2 preface, are not).
    fn from_first_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(HTTP2_PREFACE) {
            Some(Self::Http2)
        } else if HTTP2_PREFACE.starts_with(bytes) {
            None
        } else {
            Some(Self::Http1)
        }
    }
}

/// A byte stream a listener serves HTTP on.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// The request handler a listener serves each connection with (`B`: its responses' body).
pub trait Handler<B = Body>:
    Service<
        Request<Incoming>,
        Response = Response<B>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Send
    + 'static
{
}
impl<S, B> Handler<B> for S where
    S: Service<
            Request<Incoming>,
            Response = Response<B>,
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
    /// The policy no longer admits the peer (after a reload, or a rule's expiry).
    pub revoked: Revoked,
    /// The process's shutdown.
    pub shutdown: &'a CancellationToken,
    /// Marked when the connection is closed under its open requests.
    pub cut: &'a Cut,
}

impl HttpServer {
    /// Serves HTTP on a TLS connection, in the protocol its handshake agreed on, until the
    /// client is done, the connection has had no request in flight for `lifetime.idle`,
    /// reached `lifetime.close_at`, was revoked, or shutdown asks it to end. Ending is graceful
    /// first: HTTP/1.1 finishes the response in flight and closes, HTTP/2 sends GOAWAY and
    /// lets open streams end. Requests still open once the drain has passed (shutdown:
    /// `lifetime.drain`; the other ends: at most [`Lifetime::END_DRAIN`] of it) are cut by
    /// closing the connection.
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
        // HTTP/1.1 requests run in the connection's task, which is tracked already.
        let streams = (agreed == Agreed::Http2).then(|| self.streams.clone());
        let (service, watch) = Watch::new(service, ending, streams);
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
    ///
    /// They are peeked at, not read, so the chosen protocol's server reads them itself:
    /// reading them ahead (as hyper-util's detection does) makes HTTP/1.1's parser double
    /// its read buffer, 12 KiB more per idle connection.
    pub async fn serve_plain(&self, tcp: TcpStream, service: impl Handler, ending: Ending<'_>) {
        let told = tokio::select! {
            told = first_bytes_tell(&tcp) => told,
            _ = tokio::time::sleep(ending.lifetime.idle) => return,
            _ = ending.shutdown.cancelled() => return,
        };
        // Otherwise the client left (or the socket failed) before saying anything.
        if let Ok(agreed) = told {
            self.serve_agreed(agreed, tcp, service, ending).await;
        }
    }
}

/// Waits until a plain connection's first bytes tell its protocol, and leaves them unread.
async fn first_bytes_tell(tcp: &TcpStream) -> io::Result<Agreed> {
    let mut first = [0u8; HTTP2_PREFACE.len()];
    // `None`: too few bytes to tell yet.
    let told = |peeked: usize, first: &[u8]| match peeked {
        0 => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
        n => Ok(Agreed::from_first_bytes(&first[..n])),
    };
    let peeked = tcp.peek(&mut first).await?;
    if let Some(agreed) = told(peeked, &first)? {
        return Ok(agreed);
    }
    // Too few to tell (a piece of the HTTP/2 preface), which is rare. A peek sees the same
    // bytes until more arrive, so each look that cannot tell yet ends in `WouldBlock`,
    // which makes tokio wait for the socket's next readiness instead of spinning. tokio's
    // `TcpStream` has no non-blocking peek: this one goes through a duplicate of the
    // descriptor (non-blocking too: the flag belongs to the socket).
    let socket = std::net::TcpStream::from(tcp.as_fd().try_clone_to_owned()?);
    tcp.async_io(Interest::READABLE, || {
        let peeked = socket.peek(&mut first)?;
        told(peeked, &first)?.ok_or(io::ErrorKind::WouldBlock.into())
    })
    .await
}

/// A served HTTP connection that can be asked to finish the work in hand and end.
trait Graceful: Future<Output = hyper::Result<()>> {
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
    fn end_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// A served connection's [`Ending`], and its requests in flight.
struct Watch<'a> {
    activity: Arc<Activity>,
    ending: Ending<'a>,
}

impl<'a> Watch<'a> {
    /// Watches a connection that `service` serves, wrapped to count each request in
    /// flight until its response body is done (and to hold a token of `streams`, if any).
    fn new<S: Handler>(
        service: S,
        ending: Ending<'a>,
        streams: Option<TaskTracker>,
    ) -> (impl Handler<CountedBody>, Self) {
        let activity = Activity::new(streams);
        let counted = activity.clone();
        let service = service_fn(move |request| {
            let in_flight = InFlight::start(&counted);
            service
                .call(request)
                .map_ok(|response| response.map(|body| CountedBody::new(body, in_flight)))
        });
        (service, Self { activity, ending })
    }

    /// Drives `connection` to its end, ending it gracefully when it must end, and closing
    /// it under any requests still open once the drain that end allows has passed. It
    /// comes in a `FlushAtEnd` (under which a `Coalesce` stream writes what one poll
    /// produced in one go), which boxes it: an argument keeps its slot in this future for
    /// the connection's life, and hyper's connections are kilobytes (2 KiB per connection).
    async fn drive<C: Graceful>(self, mut connection: FlushAtEnd<C>) {
        let Self {
            activity,
            ending:
                Ending {
                    lifetime,
                    mut revoked,
                    shutdown,
                    cut,
                },
        } = self;
        let idle = lifetime.idle;
        let started = activity.started();
        let mut deadline = later(started, idle);
        let close_at = lifetime.close_at.unwrap_or_else(|| later(started, NEVER));
        // An end for the peer's sake (revocation, certificate expiry, age) keeps at most
        // `END_DRAIN` of the listener's drain; shutdown keeps all of it.
        let end_drain = lifetime.drain.min(Lifetime::END_DRAIN);
        let mut draining: Option<Draining> = None;
        let result = loop {
            // One timer serves every end of the connection's life, whichever comes first:
            // each poll of the connection task polls every branch, and a timer costs more
            // to poll than the other branches.
            let wake_at = match &draining {
                Some(draining) => draining.cut_at,
                None => deadline.min(close_at),
            };
            tokio::select! {
                // The connection first: it is what wakes this task nearly every time.
                biased;
                result = &mut connection => break result,
                _ = shutdown.cancelled(), if draining.is_none() => {
                    draining = Some(Draining::begin(&mut connection, "shutdown".into(), lifetime.drain));
                }
                reason = &mut revoked, if draining.is_none() => {
                    tracing::info!("closing connection: {reason}");
                    draining = Some(Draining::begin(&mut connection, reason.into(), end_drain));
                }
                _ = tokio::time::sleep_until(wake_at.into()) => {
                    if let Some(Draining { reason, drain, .. }) = &draining {
                        // Dropping the connection closes it, and every stream still open.
                        tracing::info!(?drain, "closed connection after the drain, cutting requests still open: {reason}");
                        cut.mark(reason.clone());
                        return;
                    }
                    let now = Instant::now();
                    // While a request is in flight the connection is not idle: look again
                    // an idle timeout later.
                    let idle_at = activity.idle_since().map_or(later(now, idle), |since| later(since, idle));
                    if close_at <= now {
                        let reason = "maximum age or peer certificate expiry reached";
                        tracing::info!("closing connection: {reason}");
                        draining = Some(Draining::begin(&mut connection, reason.into(), end_drain));
                    } else if idle_at <= now {
                        tracing::debug!(?idle, "closing idle connection");
                        // A request may have come in since the last look: it keeps its time.
                        draining = Some(Draining::begin(&mut connection, "idle".into(), NEVER));
                    } else {
                        deadline = idle_at;
                    }
                }
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, "connection ended with an error");
        }
    }
}

/// A connection asked to end gracefully, and when it is closed if it has not ended by then.
struct Draining {
    reason: Cow<'static, str>,
    drain: Duration,
    cut_at: Instant,
}

impl Draining {
    /// Asks `connection` to end gracefully (for `reason`), giving it `drain` to do so.
    fn begin<C: Graceful>(
        connection: &mut FlushAtEnd<C>,
        reason: Cow<'static, str>,
        drain: Duration,
    ) -> Self {
        connection.inner().end_gracefully();
        let now = Instant::now();
        Self {
            reason,
            drain,
            cut_at: later(now, drain),
        }
    }
}

/// Far enough ahead to never come.
const NEVER: Duration = Duration::from_secs(100 * 365 * 86_400);

/// `from + after`, or [`NEVER`] from then when that does not fit in an `Instant` (the
/// config bounds every duration well below that; this keeps a connection from panicking).
fn later(from: Instant, after: Duration) -> Instant {
    from.checked_add(after).unwrap_or_else(|| from + NEVER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_past_what_an_instant_holds_is_never_and_no_panic() {
        let now = Instant::now();
        assert_eq!(
            later(now, Duration::from_secs(90)),
            now + Duration::from_secs(90)
        );
        assert_eq!(later(now, Duration::MAX), now + NEVER);
    }

    #[test]
    fn first_bytes_tell_the_protocol_once_they_leave_the_http2_preface() {
        let told = |bytes: &[u8]| Agreed::from_first_bytes(bytes);
        assert_eq!(told(HTTP2_PREFACE), Some(Agreed::Http2));
        assert_eq!(
            told(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"),
            Some(Agreed::Http2)
        );
        assert_eq!(told(b"GET / HTTP/1.1\r\n"), Some(Agreed::Http1));
        assert_eq!(told(b"PUT"), Some(Agreed::Http1));
        assert_eq!(told(b"PRI * HTTP/1.1"), Some(Agreed::Http1));
        for undecided in [&b""[..], b"P", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r"] {
            assert_eq!(told(undecided), None, "{undecided:?}");
        }
    }
}
