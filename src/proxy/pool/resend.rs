//! Sending a request again when the upstream never processed it.
//!
//! hyper hands back a request it could not start sending; but a request an HTTP/2 peer
//! refused (REFUSED_STREAM: over its stream limit, before its SETTINGS reached us) or one
//! still waiting for a stream when the connection went away is consumed, and RFC 9113
//! 8.7 says both are safe to retry. A bodiless request can be rebuilt from a copy of its
//! head, kept only where a refusal can happen, so the usual request copies nothing.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// A request body sent upstream: the client's, or none (a rebuilt bodiless request).
pub enum SendBody {
    /// The body the client sent.
    Incoming(Incoming),
    /// No body.
    Empty,
}

impl Body for SendBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            SendBody::Incoming(body) => Pin::new(body).poll_frame(cx),
            SendBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SendBody::Incoming(body) => body.is_end_stream(),
            SendBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SendBody::Incoming(body) => body.size_hint(),
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
