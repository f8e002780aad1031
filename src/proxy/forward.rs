//! Sends a request to an upstream through a pooled client and maps failures to refusals.
//!
//! Shared by inbound (to the local app) and outbound (to the peer sidecar). Bodies are
//! streamed both ways; nothing here buffers a whole body.

use std::time::Duration;

use http::{Request, Response, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::headers::strip_hop_by_hop;
use super::respond::{Body, Refusal};
use super::stream::{ConnectError, Connector};

/// Idle pooled connections are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// A pooled client for one upstream.
#[derive(Clone)]
pub struct Upstream {
    client: Client<Connector, Incoming>,
    base: Uri,
    response_timeout: Duration,
}

/// Why a forward failed, for the status and the log.
#[derive(Debug)]
pub struct ForwardError {
    /// What the client is told.
    pub refusal: Refusal,
    /// What the log says.
    pub reason: String,
}

impl Upstream {
    /// A client that sends every request to `connector`, naming `base` (scheme and authority) in URIs.
    pub fn new(connector: Connector, base: Uri, response_timeout: Duration) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector);
        Self {
            client,
            base,
            response_timeout,
        }
    }

    /// Rewrites the request for the upstream (URI, version, hop-by-hop headers), sends it
    /// and returns the response with its hop-by-hop headers removed.
    pub async fn forward(
        &self,
        mut request: Request<Incoming>,
        path: &str,
    ) -> Result<Response<Body>, ForwardError> {
        if !request.headers().contains_key(http::header::HOST) {
            if let Some(authority) = request.uri().authority() {
                if let Ok(host) = authority.as_str().parse() {
                    request.headers_mut().insert(http::header::HOST, host);
                }
            }
        }
        *request.uri_mut() = self.uri_for(path, request.uri().query())?;
        *request.version_mut() = Version::HTTP_11;
        strip_hop_by_hop(request.headers_mut());
        let response = tokio::time::timeout(self.response_timeout, self.client.request(request))
            .await
            .map_err(|_| ForwardError {
                refusal: Refusal::Timeout,
                reason: format!("no response within {:?}", self.response_timeout),
            })?
            .map_err(classify)?;
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, Either::Left(body)))
    }

    fn uri_for(&self, path: &str, query: Option<&str>) -> Result<Uri, ForwardError> {
        let path_and_query = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(path_and_query.parse().map_err(|e| ForwardError {
            refusal: Refusal::BadPath,
            reason: format!("cannot build upstream URI: {e}"),
        })?);
        Uri::from_parts(parts).map_err(|e| ForwardError {
            refusal: Refusal::BadPath,
            reason: format!("cannot build upstream URI: {e}"),
        })
    }
}

fn classify(error: hyper_util::client::legacy::Error) -> ForwardError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = source {
        if let Some(connect) = e.downcast_ref::<ConnectError>() {
            let refusal = match connect {
                ConnectError::Timeout(..) => Refusal::Timeout,
                _ => Refusal::Unreachable,
            };
            return ForwardError {
                refusal,
                reason: connect.to_string(),
            };
        }
        source = e.source();
    }
    ForwardError {
        refusal: Refusal::Unreachable,
        reason: chain(&error),
    }
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
