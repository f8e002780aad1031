//! The body a request is sent upstream with, and sending a request again when the
//! upstream never processed it.
//!
//! hyper hands back a request it could not start sending; but a request an HTTP/2 peer
//! refused (REFUSED_STREAM: over its stream limit, before its SETTINGS reached us) or one
//! still waiting for a stream when the connection went away is consumed, and RFC 9113
//! 8.7 says both are safe to retry. A bodiless request can be rebuilt from a copy of its
//! head, kept only where a refusal can happen, so the usual request copies nothing.
//!
//! A client body that breaks off (its client went away mid-body) fails the upstream
//! request too; the body says so, so that the failure is the client's, not the upstream's.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::PoolError;

/// A request body sent upstream: the client's (with what tells that it broke off, when it
/// has any bytes to send), or none (a rebuilt bodiless request).
pub enum SendBody {
    /// The body the client sent.
    Incoming(Incoming, Option<BrokeOff>),
    /// No body.
    Empty,
}

/// Set once a client's request body failed while it was being sent upstream: the client
/// went away (or broke the body's framing) mid-body.
#[derive(Clone, Debug, Default)]
pub struct BrokeOff(Arc<AtomicBool>);

/// Why a sent request got no response: its client's body broke off, or the upstream failed.
pub fn failure(error: hyper::Error, broke_off: &Option<BrokeOff>) -> PoolError {
    match broke_off
        .as_ref()
        .is_some_and(|b| b.0.load(Ordering::Acquire))
    {
        true => PoolError::ClientBody(error),
        false => PoolError::Http(error),
    }
}

impl SendBody {
    /// The client's `body`, and what tells that it broke off (nothing for a body that has
    /// no bytes to send: it cannot break off).
    pub fn of_client(body: Incoming) -> (Self, Option<BrokeOff>) {
        let broke_off = (!body.is_end_stream()).then(BrokeOff::default);
        (Self::Incoming(body, broke_off.clone()), broke_off)
    }
}

impl Body for SendBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            SendBody::Incoming(body, broke_off) => {
                let frame = Pin::new(body).poll_frame(cx);
                if let (Poll::Ready(Some(Err(_))), Some(broke_off)) = (&frame, broke_off) {
                    broke_off.0.store(true, Ordering::Release);
                }
                frame
            }
            SendBody::Empty => Poll::Ready(None),
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

/// True when `error` says the upstream never processed the request: an HTTP/2 stream the
/// peer refused, or a request hyper's dispatch dropped before it opened a stream (the
/// connection went away while the request waited for one). hyper names the latter only
/// in its message.
pub fn never_processed(error: &hyper::Error) -> bool {
    if error.is_user() && error.to_string().starts_with("dispatch task is gone") {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = cause.source();
    }
    false
}
