//! Connections to one upstream, reused across requests: HTTP/2 connections shared by
//! concurrent requests, or a stack of idle HTTP/1.1 ones.
//!
//! ALPN (or prior knowledge, for gRPC over h2c) decides the protocol of each new
//! connection. An HTTP/2 connection carries requests up to its peer's stream limit
//! (`http2`), another opens when every one is full; an HTTP/1.1 connection goes back to
//! the pool when its response body has been read to the end. No connection is handed out
//! after its peer's certificate expires. A request that a reused connection dropped
//! before sending (it closed under us), or that the peer never processed (`resend`), is
//! sent again on a fresh connection. Per request this costs an uncontended lock, a count
//! and a clone of the sender: no pool key to hash, no boxed future, no map of extras.

mod http2;
mod resend;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper::rt::Executor;
use hyper_util::rt::TokioIo;

use self::http2::{Checkout2, StreamSlot};
use self::resend::SendBody;
use super::coalesce::FlushingExecutor;
use super::headers::prepare_for_hpack;
use super::serve::instant_of;
use super::stall::{StallWatch, Stalled};
use super::stream::{ConnectError, Connector};
use crate::tls::PeerIdentity;

/// The largest response head taken from an upstream (larger gets 502), as Envoy's 60 KiB
/// default: the HTTP/2 header list from a peer sidecar (hyper's default is 16 KiB, so a
/// response that reached the app's client directly would fail through the sidecars), and
/// the read buffer of an HTTP/1.1 connection to the app, which a pooled connection keeps
/// while idle (hyper's default lets one large response grow it to about 400 KiB; 64 KiB
/// reads keep up with the 64 KiB HTTP/2 frames between sidecars).
const MAX_RESPONSE_HEAD: u32 = 64 * 1024;

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connection failed before or while the response head arrived.
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// The client's request body broke off (the client went away) while it was being sent,
    /// which failed the request: the client's doing, not the upstream's.
    #[error("the client's request body broke off: {0}")]
    ClientBody(hyper::Error),
    /// The client sent nothing of its request body for the body timeout, so the request
    /// was cut before its response came.
    #[error("the client sent nothing of its request body for {:?} (timeouts.body)", .0 .0)]
    ClientStalled(Stalled),
}

/// The identity the upstream proved in its handshake (mTLS connections only).
pub type Peer = Option<Arc<PeerIdentity>>;

/// Connections to one upstream. Clones share them.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    connector: Connector,
    /// Speak HTTP/2 without asking (gRPC to the local app over h2c).
    http2_only: bool,
    idle_timeout: Duration,
    /// The longest a response body may deliver nothing before it is cut.
    body_timeout: Duration,
    /// The last connection negotiated HTTP/2, so concurrent requests should wait for one
    /// connection instead of each opening their own.
    expect_http2: AtomicBool,
    /// The limit on concurrent streams the peer advertised last (a guess before it has).
    max_streams: Arc<AtomicUsize>,
    /// Held while an HTTP/2 connection is being opened.
    opening: tokio::sync::Mutex<()>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    http2: http2::Conns,
    /// Most recently used last.
    idle: Vec<Idle1>,
    reaper: bool,
    /// Failed attempts to open an HTTP/2 connection, and the last one's error:
    /// requests that waited for an attempt that failed fail with it at once, instead of
    /// each waiting out its own connect timeout in turn.
    failed_opens: u64,
    last_open_error: Option<ConnectError>,
}

struct Idle1 {
    sender: http1::SendRequest<SendBody>,
    peer: Peer,
    /// When the peer's certificate expires.
    expires: Option<Instant>,
    since: Instant,
}

/// A connection checked out for one request.
enum Checkout {
    Http2(Checkout2),
    Http1(http1::SendRequest<SendBody>, Peer),
}

impl Pool {
    /// A pool that opens connections with `connector` and closes them after
    /// `idle_timeout` unused; `http2_only` skips negotiation (h2c). A response body that
    /// delivers nothing for `body_timeout` is cut.
    pub fn new(
        connector: Connector,
        http2_only: bool,
        idle_timeout: Duration,
        body_timeout: Duration,
    ) -> Self {
        let expect_http2 = http2_only || connector.is_tls();
        Self {
            inner: Arc::new(Inner {
                connector,
                http2_only,
                idle_timeout,
                body_timeout,
                expect_http2: AtomicBool::new(expect_http2),
                max_streams: Arc::new(AtomicUsize::new(http2::DEFAULT_MAX_STREAMS)),
                opening: tokio::sync::Mutex::new(()),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Sends `request` (its URI absolute: scheme and authority name the upstream, and
    /// HTTP/2 sends them as `:scheme` and `:authority`) and returns the response head,
    /// the body streaming behind it.
    pub async fn send(
        &self,
        request: Request<Incoming>,
    ) -> Result<(Response<UpstreamBody>, Peer), PoolError> {
        let (parts, body) = request.into_parts();
        let (body, broke_off) = SendBody::of_client(body, self.inner.body_timeout);
        let failure = |error| resend::failure(error, &broke_off, self.inner.body_timeout);
        let mut request = Request::from_parts(parts, body);
        // Sent again once already because the peer never processed it.
        let mut resent = false;
        loop {
            let (checkout, reused) = match self.inner.checkout() {
                Some(checkout) => (checkout, true),
                // Boxed: opening a connection (a TLS handshake) is rare, but its state
                // would size the future of every request, which is moved several times.
                None => (Box::pin(self.inner.open()).await?, false),
            };
            match checkout {
                Checkout::Http2(Checkout2 {
                    mut sender,
                    peer,
                    slot,
                }) => {
                    // The connection's HPACK table may keep these values for long.
                    prepare_for_hpack(request.headers_mut());
                    // Until a response shows the peer's SETTINGS arrived, it may refuse
                    // streams beyond a limit we did not know yet: keep a copy to resend
                    // (a GOAWAY below the request's stream meanwhile resends it too).
                    let copy = (!resent && !slot.settled())
                        .then(|| resend::copy(&request))
                        .flatten();
                    match sender.try_send_request(request).await {
                        Ok(response) => {
                            slot.settle();
                            return Ok((
                                response.map(|body| {
                                    UpstreamBody::http2(body, slot, self.inner.body_timeout)
                                }),
                                peer,
                            ));
                        }
                        Err(mut error) => match (error.take_message(), copy) {
                            (Some(unsent), _) if reused => {
                                self.inner.state().http2.forget(&slot);
                                request = unsent;
                            }
                            (_, Some(copy)) if resend::never_processed(error.error()) => {
                                slot.settle();
                                tracing::debug!(error = %error.error(), "peer never processed the request: sending it again");
                                resent = true;
                                request = copy;
                            }
                            _ => return Err(failure(error.into_error())),
                        },
                    }
                }
                Checkout::Http1(mut sender, peer) => {
                    let absolute = to_origin_form(&mut request);
                    match sender.try_send_request(request).await {
                        Ok(response) => {
                            return Ok((self.release_at_end(response, sender, &peer), peer))
                        }
                        Err(mut error) => match error.take_message() {
                            Some(mut unsent) if reused => {
                                *unsent.uri_mut() = absolute;
                                request = unsent;
                            }
                            _ => return Err(failure(error.into_error())),
                        },
                    }
                }
            }
        }
    }

    /// Wraps the body so the connection returns to the pool once the body is read.
    fn release_at_end(
        &self,
        response: Response<Incoming>,
        sender: http1::SendRequest<SendBody>,
        peer: &Peer,
    ) -> Response<UpstreamBody> {
        // A switched connection belongs to the upgrade from now on.
        let reusable = response.status() != StatusCode::SWITCHING_PROTOCOLS;
        response.map(|body| {
            let mut body = UpstreamBody::plain(body, self.inner.body_timeout);
            if reusable {
                body.release = Some(Release {
                    sender,
                    peer: peer.clone(),
                    pool: self.inner.clone(),
                });
                body.release_if_done();
            }
            body
        })
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // The lock is never held across a panic point that leaves the state broken.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A live connection, if one is free: an HTTP/2 one with a free stream, or the most
    /// recently used idle HTTP/1.1 one that is ready for a request (neither past its
    /// peer's certificate expiry).
    fn checkout(&self) -> Option<Checkout> {
        let mut state = self.state();
        if let Some(shared) = state.http2.checkout() {
            return Some(Checkout::Http2(shared));
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut finishing = Vec::new();
        let mut found = None;
        while let Some(mut idle) = state.idle.pop() {
            if idle.since.elapsed() >= self.idle_timeout
                || idle.expires.is_some_and(|at| at <= Instant::now())
            {
                continue;
            }
            match idle.sender.poll_ready(&mut cx) {
                Poll::Ready(Ok(())) => {
                    found = Some(Checkout::Http1(idle.sender, idle.peer));
                    break;
                }
                Poll::Ready(Err(_)) => {}
                // Still reading the end of its last response: ready in a moment.
                Poll::Pending => finishing.push(idle),
            }
        }
        state.idle.append(&mut finishing);
        found
    }

    /// Opens a connection; while HTTP/2 is expected, one at a time: a request that waited
    /// takes a stream on the connection the attempt before it opened (if one is free
    /// there), or fails with its error.
    async fn open(self: &Arc<Self>) -> Result<Checkout, PoolError> {
        if !self.expect_http2.load(Ordering::Relaxed) {
            return self.connect().await;
        }
        let failures_before = self.state().failed_opens;
        let _opening = self.opening.lock().await;
        {
            let mut state = self.state();
            if let Some(shared) = state.http2.checkout() {
                return Ok(Checkout::Http2(shared));
            }
            if state.failed_opens != failures_before {
                if let Some(error) = &state.last_open_error {
                    return Err(PoolError::Connect(error.clone()));
                }
            }
        }
        let opened = self.connect().await;
        if let Err(PoolError::Connect(error)) = &opened {
            let mut state = self.state();
            state.failed_opens += 1;
            state.last_open_error = Some(error.clone());
        }
        opened
    }

    async fn connect(self: &Arc<Self>) -> Result<Checkout, PoolError> {
        let stream = self.connector.clone().connect().await?;
        let peer = stream.peer().cloned().map(Arc::new);
        let http2 = self.http2_only || stream.negotiated_http2();
        self.expect_http2.store(http2, Ordering::Relaxed);
        let checkout = if http2 {
            let opened = http2::open(stream, peer, &self.max_streams, |conn| {
                self.state().http2.push(conn);
            });
            Checkout::Http2(opened.await?)
        } else {
            let (sender, connection) = http1::Builder::new()
                .max_buf_size(MAX_RESPONSE_HEAD as usize)
                .handshake(TokioIo::new(stream))
                .await?;
            FlushingExecutor.execute(async move {
                if let Err(error) = connection.with_upgrades().await {
                    tracing::debug!(%error, "upstream HTTP/1.1 connection ended");
                }
            });
            Checkout::Http1(sender, peer)
        };
        self.start_reaper();
        Ok(checkout)
    }

    fn check_in(&self, sender: http1::SendRequest<SendBody>, peer: Peer) {
        let expires = peer.as_ref().and_then(|p| instant_of(p.not_after));
        self.state().idle.push(Idle1 {
            sender,
            peer,
            expires,
            since: Instant::now(),
        });
    }

    /// Closes connections idle for longer than the timeout, every third of it, for as
    /// long as the pool exists.
    fn start_reaper(self: &Arc<Self>) {
        let mut state = self.state();
        if std::mem::replace(&mut state.reaper, true) {
            return;
        }
        let pool: Weak<Self> = Arc::downgrade(self);
        let period = self.idle_timeout / 3;
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                pool.close_idle();
            }
        });
    }

    /// Closes connections unused for the idle timeout, and HTTP/2 connections beyond one
    /// idle spare once unused for a reaper period. Requests in flight keep their clone of
    /// the sender and finish.
    fn close_idle(&self) {
        let mut state = self.state();
        let timeout = self.idle_timeout;
        state.idle.retain(|idle| idle.since.elapsed() < timeout);
        state.http2.close_idle(timeout, timeout / 3);
    }
}

/// Rewrites an absolute URI to the origin form HTTP/1.1 sends (with a `Host` header
/// when the request has none); returns the absolute URI, for a retry.
fn to_origin_form(request: &mut Request<SendBody>) -> Uri {
    let origin = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let absolute = std::mem::replace(request.uri_mut(), Uri::from(origin));
    if !request.headers().contains_key(HOST) {
        if let Some(host) = absolute
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            request.headers_mut().insert(HOST, host);
        }
    }
    absolute
}

/// A response body from the pool: an HTTP/1.1 connection goes back to the pool when the
/// body has been read to the end (and is closed if the body is dropped before that); an
/// HTTP/2 stream is given back when the body ends or is dropped. A body that delivers
/// nothing for the pool's body timeout ends with [`BodyError::Stalled`].
pub struct UpstreamBody {
    body: Incoming,
    release: Option<Release>,
    stream: Option<StreamSlot>,
    stall: StallWatch,
}

/// Why a body (a response from the pool, or a client's request body sent to it) broke off.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Its connection or stream failed.
    #[error(transparent)]
    Broken(#[from] hyper::Error),
    /// Its sender stopped sending it.
    #[error("nothing of the body came for {:?} (timeouts.body): cut", .0 .0)]
    Stalled(#[from] Stalled),
}

struct Release {
    sender: http1::SendRequest<SendBody>,
    peer: Peer,
    pool: Arc<Inner>,
}

impl UpstreamBody {
    fn plain(body: Incoming, stall_limit: Duration) -> Self {
        Self {
            body,
            release: None,
            stream: None,
            stall: StallWatch::new(stall_limit),
        }
    }

    fn http2(body: Incoming, slot: StreamSlot, stall_limit: Duration) -> Self {
        let mut body = Self {
            stream: Some(slot),
            ..Self::plain(body, stall_limit)
        };
        body.release_if_done();
        body
    }

    fn release_if_done(&mut self) {
        if self.body.is_end_stream() {
            self.release();
        }
    }

    fn release(&mut self) {
        self.stream = None;
        if let Some(release) = self.release.take() {
            release.pool.check_in(release.sender, release.peer);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let frame = match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(frame) => frame.map(|f| f.map_err(BodyError::from)),
            Poll::Pending => match self.stall.waiting(cx) {
                Ok(()) => return Poll::Pending,
                Err(stalled) => {
                    let error = BodyError::from(stalled);
                    tracing::warn!("the upstream's response body stalled: {error}");
                    Some(Err(error))
                }
            },
        };
        match &frame {
            None => self.release(),
            Some(Ok(_)) => {
                self.stall.progressed();
                self.release_if_done();
            }
            // A broken body leaves the connection unusable: it closes with the sender (an
            // HTTP/2 stream is reset when its body is dropped).
            Some(Err(_)) => {
                self.release = None;
                self.stream = None;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
