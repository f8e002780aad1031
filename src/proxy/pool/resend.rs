//! The body a request is sent upstream with, and sending a request again when the
//! upstream never processed it.
//!
//! hyper hands back a request it could not start sending; but a request it has consumed
//! is safe to retry too when the HTTP/2 peer says it never processed it (RFC 9113 8.7):
//! a stream the peer refused (REFUSED_STREAM: over its stream limit, before its SETTINGS
//! reached us), a stream above the last-stream-id of a GOAWAY the peer sent (it is
//! shutting down or restarting, 6.8), or a request still waiting for a stream when the
//! connection went away. A bodiless request can be rebuilt from a copy of its head, kept
//! only until the connection's first response (while a refusal can happen), so the
//! usual request copies nothing: a GOAWAY that catches a request on a connection that
//! has answered before fails it, as one that catches a request with a body does.
//!
//! A client body that breaks off (its client went away mid-body) or stalls (nothing for
//! the `body` timeout) fails the upstream request too; the body says so, so that the
//! failure is the client's, not the upstream's.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::{BodyError, PoolError};
use crate::proxy::stall::{StallWatch, Stalled};

/// A request body sent upstream: the client's (watched, when it has any bytes to send),
/// or none (a rebuilt bodiless request).
pub enum SendBody {
    /// The body the client sent (its watch boxed: a request is moved several times on its
    /// way upstream, and most have no body to watch).
    Incoming(Incoming, Option<Box<Watch>>),
    /// No body.
    Empty,
}

/// What watches a client body with bytes to send: its stall clock, and how it ended.
pub struct Watch {
    stall: StallWatch,
    ending: BrokeOff,
}

/// Set once a client's request body failed while it was being sent upstream: the client
/// went away (or broke the body's framing) mid-body, or sent nothing of it for too long.
#[derive(Clone, Debug, Default)]
pub struct BrokeOff(Arc<AtomicU8>);

/// [`BrokeOff`]'s states.
const BROKEN: u8 = 1;
const STALLED: u8 = 2;

/// Why a sent request got no response: its client's body broke off or stalled (after
/// `limit`), or the upstream failed.
pub fn failure(error: hyper::Error, broke_off: &Option<BrokeOff>, limit: Duration) -> PoolError {
    match broke_off.as_ref().map(|b| b.0.load(Ordering::Acquire)) {
        Some(BROKEN) => PoolError::ClientBody(error),
        Some(STALLED) => PoolError::ClientStalled(Stalled(limit)),
        _ => PoolError::Http(error),
    }
}

impl SendBody {
    /// The client's `body`, which may send nothing for at most `stall_limit`, and what
    /// tells that it broke off (nothing for a body that has no bytes to send: it cannot
    /// break off).
    pub fn of_client(body: Incoming, stall_limit: Duration) -> (Self, Option<BrokeOff>) {
        if body.is_end_stream() {
            return (Self::Incoming(body, None), None);
        }
        let ending = BrokeOff::default();
        let watch = Box::new(Watch {
            stall: StallWatch::new(stall_limit),
            ending: ending.clone(),
        });
        (Self::Incoming(body, Some(watch)), Some(ending))
    }
}

impl Body for SendBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let (body, watch) = match self.get_mut() {
            SendBody::Incoming(body, watch) => (body, watch),
            SendBody::Empty => return Poll::Ready(None),
        };
        let frame = Pin::new(body).poll_frame(cx);
        let Some(watch) = watch else {
            return frame.map_err(BodyError::from);
        };
        match frame {
            Poll::Ready(Some(Ok(frame))) => {
                watch.stall.progressed();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                watch.ending.0.store(BROKEN, Ordering::Release);
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match watch.stall.waiting(cx) {
                Ok(()) => Poll::Pending,
                Err(stalled) => {
                    let error = BodyError::from(stalled);
                    tracing::info!("the client's request body stalled: {error}");
                    watch.ending.0.store(STALLED, Ordering::Release);
                    Poll::Ready(Some(Err(error)))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SendBody::Incoming(body, _) => body.is_end_stream(),
            SendBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SendBody::Incoming(body, _) => body.size_hint(),
            SendBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A copy of `request` to send again, if it has no body left to send (a body, once
/// streamed, cannot be replayed).
pub fn copy(request: &Request<SendBody>) -> Option<Request<SendBody>> {
    if !request.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(SendBody::Empty);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    Some(copy)
}

/// True when `error` says the upstream never processed the request, so that sending it
/// again cannot repeat its effects (RFC 9113 8.7); false for anything it may have
/// processed.
///
/// - The peer refused its stream (RST_STREAM with REFUSED_STREAM).
/// - The peer sent GOAWAY with a last-stream-id below the request's stream, whatever its
///   error code (6.8). h2 gives a stream the error of a GOAWAY from the peer only then,
///   and to a request it is asked to open after one (which never leaves). A stream at or
///   below the last-stream-id stays open; if the connection then ends under it (after a
///   GOAWAY with NO_ERROR or with an error code) it gets an I/O error (broken pipe, or
///   the transport's): not sent again. One exception needs a multi-threaded runtime
///   (idgate's workers are single-threaded, the demo's runtime is not): hyper checks the
///   connection again right after opening a stream, and a GOAWAY that another thread
///   took in between fails that request with its error.
/// - hyper's dispatch dropped it before it opened a stream (the connection went away
///   while it waited for one). hyper (1.12) tells this only in its message: the kind is
///   private, `is_user()` covers any misuse too, and `is_canceled()` is another error
///   (a request handed back unsent, which `take_message` returns). One narrow race hides
///   in it: a stream h2 opened for it in the instant before the connection failed, whose
///   HEADERS may have left.
pub fn never_processed(error: &hyper::Error) -> bool {
    if error.is_user() && error.to_string().starts_with("dispatch task is gone") {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            // A remote RST_STREAM or GOAWAY: what the peer said of this stream.
            return h2.is_remote()
                && (h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM));
        }
        source = cause.source();
    }
    false
}
