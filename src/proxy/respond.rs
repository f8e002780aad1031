//! Every response idgate writes itself, and the one mapping from proxy errors to statuses.
//!
//! A denied gRPC call gets `grpc-status: 7` in an HTTP 200 (gRPC clients cannot read a
//! 403); everything else gets a short text body. Never forwards anything.

use bytes::Bytes;
use http::header;
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use scopeguard::ScopeGuard;

use super::in_flight::Cut;
use super::pool::UpstreamBody;
use super::request_id::{RequestId, REQUEST_ID};
use crate::telemetry::RequestMetrics;

/// The decision-log status of a request whose client went away before its response
/// (nginx's 499: nothing was sent).
const CLIENT_GONE_STATUS: u16 = 499;
/// The decision-log reason of such a request.
const CLIENT_GONE: &str = "the client went away before the response";
/// The decision-log status of a request whose connection idgate closed under it once a
/// drain passed (the client gets no response; 503 is what it would have been told).
const CUT_STATUS: u16 = 503;
/// The decision-log reason of such a request, before why the connection ended.
const CUT: &str = "connection closed under the request after the drain";
/// The decision-log reason of a request whose client went away while sending its body.
pub const CLIENT_GONE_MID_BODY: &str = "the client went away while sending the request body";

/// Calls `abandoned` when dropped, unless defused first with [`ScopeGuard::into_inner`]:
/// held across the forward, it gives a request whose future is dropped unfinished a
/// decision line: 503 with the reason when its connection was closed under it after a
/// drain (`cut`, counted in `requests`), else 499, its client went away. A guard, not a
/// wrapping future: hyper keeps a slot the size of the request handler's future in every
/// HTTP/1.1 connection, and an `async fn` wrapper stores the forward future twice.
pub fn log_if_abandoned<'a>(
    cut: &'a Cut,
    requests: &'a RequestMetrics,
    abandoned: impl FnOnce(u16, &str) + 'a,
) -> ScopeGuard<(), impl FnOnce(()) + 'a> {
    scopeguard::guard((), move |()| match cut.reason() {
        Some(why) => {
            requests.cut();
            abandoned(CUT_STATUS, &format!("{CUT}: {why}"));
        }
        None => abandoned(CLIENT_GONE_STATUS, CLIENT_GONE),
    })
}

/// The body of every proxied response: streamed from upstream or written here.
pub type Body = Either<UpstreamBody, Full<Bytes>>;

/// Why idgate answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The policy denied the request.
    Denied,
    /// The path was refused by normalisation.
    BadPath,
    /// The request had more than one `Host` header.
    BadHost,
    /// The upstream could not be reached, or its identity was wrong.
    Unreachable,
    /// The upstream did not answer in time.
    Timeout,
    /// The client went away (or broke its body off) while sending the request body: 499,
    /// as a client that leaves before the response; not the upstream's failure.
    ClientGone,
    /// The client sent nothing of its request body for the `body` timeout: 408.
    ClientTimeout,
}

impl Refusal {
    /// The HTTP status of this refusal.
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Denied => StatusCode::FORBIDDEN,
            Refusal::BadPath | Refusal::BadHost => StatusCode::BAD_REQUEST,
            Refusal::Unreachable => StatusCode::BAD_GATEWAY,
            Refusal::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Refusal::ClientGone => {
                StatusCode::from_u16(CLIENT_GONE_STATUS).unwrap_or(StatusCode::BAD_REQUEST)
            }
            Refusal::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn body(self) -> &'static str {
        match self {
            Refusal::Denied => "access denied",
            Refusal::BadPath => "bad request path",
            Refusal::BadHost => "bad Host header",
            Refusal::Unreachable => "upstream unavailable",
            Refusal::Timeout => "upstream timed out",
            Refusal::ClientGone => "client closed request",
            Refusal::ClientTimeout => "request body timed out",
        }
    }

    fn grpc_status(self) -> (&'static str, &'static str) {
        match self {
            Refusal::Denied => ("7", "access denied"),
            Refusal::BadPath => ("3", "bad request path"),
            Refusal::BadHost => ("3", "bad Host header"),
            Refusal::Unreachable => ("14", "upstream unavailable"),
            Refusal::Timeout => ("4", "upstream timed out"),
            Refusal::ClientGone => ("1", "client closed request"),
            Refusal::ClientTimeout => ("4", "request body timed out"),
        }
    }
}

/// Whether a request is a gRPC call (by its content type).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Builds the response for a refusal, carrying the request's ID.
pub fn refusal(refusal: Refusal, request_id: &RequestId, grpc: bool) -> Response<Body> {
    let mut response = if grpc {
        let (code, message) = refusal.grpc_status();
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/grpc")
            .header("grpc-status", code)
            .header("grpc-message", message)
            .body(Either::Right(Full::new(Bytes::new())))
    } else {
        Response::builder()
            .status(refusal.status())
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Either::Right(Full::new(Bytes::from_static(
                refusal.body().as_bytes(),
            ))))
    }
    .expect("static parts make a valid response");
    response
        .headers_mut()
        .insert(REQUEST_ID, request_id.to_header_value());
    response
}
