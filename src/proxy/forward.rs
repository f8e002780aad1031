//! Sends a request to an upstream through its connection pool and maps failures to refusals.
//!
//! Shared by inbound (to the local app) and outbound (to the peer sidecar). Bodies are
//! streamed both ways; nothing here buffers a whole body. gRPC calls may take an HTTP/2
//! client and upgrade requests (WebSocket) an HTTP/1.1 one; an accepted upgrade becomes
//! a [`Tunnel`] between the two upgraded connections, which the caller's connection runs.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use http::uri::Authority;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;

use super::headers::{keep_upgrade, prepare_for_hpack, strip_hop_by_hop, upgrade_protocol};
use super::pool::{Peer, Pool, PoolError};
use super::respond::{is_grpc, Body, Refusal, CLIENT_GONE_MID_BODY};
use super::serve::{instant_of, Revoked};
use super::stream::{ConnectError, Connector};
use super::tunnel::Tunnel;
use crate::config::Timeouts;
use crate::per_worker;

/// Idle pooled connections are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// A pooled client for one upstream. Clones share the pools, so [`Upstream::refresh`]
/// reaches every user.
#[derive(Clone)]
pub struct Upstream {
    connectors: Connectors,
    /// One set per worker thread, so a request never waits on another thread's connection.
    pools: Arc<[ArcSwap<Pools>]>,
    base: Uri,
    response_timeout: Duration,
}

/// What the pools connect with: the default, and optional ones for gRPC and upgrades;
/// and how long their bodies may stall (and an upgrade's tunnel carry nothing).
#[derive(Clone)]
struct Connectors {
    default: Connector,
    grpc: Option<Connector>,
    upgrade: Option<Connector>,
    body_timeout: Duration,
}

/// One generation of connection pools.
struct Pools {
    default: Pool,
    grpc: Option<Pool>,
    upgrade: Option<Pool>,
}

impl Connectors {
    fn pools(&self) -> Pools {
        let pool = |connector: &Connector, http2_only| {
            Pool::new(connector.clone(), http2_only, POOL_IDLE, self.body_timeout)
        };
        Pools {
            default: pool(&self.default, false),
            grpc: self.grpc.as_ref().map(|c| pool(c, true)),
            upgrade: self.upgrade.as_ref().map(|c| pool(c, false)),
        }
    }
}

/// The upstream's response, and who the upstream proved to be (mTLS only).
pub struct Forwarded {
    /// The response, hop-by-hop headers removed.
    pub response: Response<Body>,
    /// The identity the upstream presented in its handshake.
    pub peer: Peer,
    /// The tunnel an accepted upgrade (a `101`) becomes, for the client's connection to run
    /// once its HTTP server hands the connection over.
    pub tunnel: Option<Tunnel>,
}

/// Why a forward failed, for the status and the log.
#[derive(Debug)]
pub struct ForwardError {
    /// What the client is told.
    pub refusal: Refusal,
    /// What the log says.
    pub reason: String,
}

impl ForwardError {
    /// Logs the failure: as a warning (`message`) when the upstream failed, at debug when
    /// the client went away mid-body or stalled it.
    pub fn log(&self, message: &str) {
        match self.refusal {
            Refusal::ClientGone => tracing::debug!(reason = %self.reason, "client went away"),
            Refusal::ClientTimeout => tracing::debug!(reason = %self.reason, "client stalled"),
            _ => tracing::warn!(reason = %self.reason, "{message}"),
        }
    }
}

impl Upstream {
    /// A client that sends every request to `connector`, naming `base` (scheme and
    /// authority) in URIs, with pools for `workers` threads, bounded by the listener's
    /// `response` and `body` timeouts (`body` bounds an upgrade's tunnel too).
    pub fn new(connector: Connector, base: Uri, timeouts: &Timeouts, workers: usize) -> Self {
        let connectors = Connectors {
            default: connector,
            grpc: None,
            upgrade: None,
            body_timeout: timeouts.body.0,
        };
        Self {
            pools: (0..workers.max(1))
                .map(|_| ArcSwap::from_pointee(connectors.pools()))
                .collect(),
            connectors,
            base,
            response_timeout: timeouts.response.0,
        }
    }

    /// Sends gRPC calls over HTTP/2 without TLS (prior knowledge) through `connector`.
    pub fn with_grpc_h2c(mut self, connector: Connector) -> Self {
        self.connectors.grpc = Some(connector);
        self.refresh();
        self
    }

    /// Sends upgrade requests through `connector` (which must speak HTTP/1.1).
    pub fn with_upgrades(mut self, connector: Connector) -> Self {
        self.connectors.upgrade = Some(connector);
        self.refresh();
        self
    }

    /// Starts fresh pools: later requests open new connections (e.g. with a rotated SVID)
    /// while requests in flight finish on the old ones, which close once idle.
    pub fn refresh(&self) {
        for pools in self.pools.iter() {
            pools.store(Arc::new(self.connectors.pools()));
        }
    }

    /// Rewrites the request for the upstream (URI, version), sends it and returns the
    /// response with its hop-by-hop headers removed. The request's own hop-by-hop headers
    /// must be gone already ([`strip_request_hop_by_hop`], before idgate added any
    /// header): what is left of `Connection` is an upgrade's; and its `Host` settled
    /// ([`settle_host`]), which gives `authority`: the URI names it (HTTP/2 sends it as
    /// `:authority`, which must agree with `Host`), or the upstream's without one.
    ///
    /// [`strip_request_hop_by_hop`]: super::headers::strip_request_hop_by_hop
    /// [`settle_host`]: super::headers::settle_host
    pub async fn forward(
        &self,
        mut request: Request<Incoming>,
        path: &str,
        authority: Option<Authority>,
        revoked: Option<Revoked>,
    ) -> Result<Forwarded, ForwardError> {
        *request.uri_mut() = self.uri_for(request.uri(), path, authority)?;
        let answer_over_http2 = request.version() == Version::HTTP_2;
        *request.version_mut() = Version::HTTP_11;
        let upgrade = upgrade_protocol(request.headers());
        let client_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        let pools = self.pools[per_worker::current() % self.pools.len()].load_full();
        let pool = match (&upgrade, &pools.upgrade, &pools.grpc) {
            (Some(_), Some(pool), _) => pool,
            (None, _, Some(pool)) if is_grpc(request.headers()) => pool,
            _ => &pools.default,
        };
        let (mut response, peer) = tokio::time::timeout(self.response_timeout, pool.send(request))
            .await
            .map_err(|_| ForwardError {
                refusal: Refusal::Timeout,
                reason: format!("no response within {:?}", self.response_timeout),
            })?
            .map_err(classify)?;
        let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        // Only a 101 agrees to an upgrade (and other responses are not searched for one).
        let server_protocol = switched
            .then(|| upgrade_protocol(response.headers()))
            .flatten();
        let tunnel = match (client_side, &server_protocol) {
            (Some(client_side), Some(_)) => {
                let server_side = hyper::upgrade::on(&mut response);
                let peer_expiry = peer.as_ref().and_then(|p| instant_of(p.not_after));
                Some(Tunnel::new(
                    client_side,
                    server_side,
                    revoked,
                    peer_expiry,
                    self.connectors.body_timeout,
                ))
            }
            _ => None,
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(protocol) = server_protocol {
            keep_upgrade(&mut parts.headers, protocol);
        }
        if answer_over_http2 {
            prepare_for_hpack(&mut parts.headers);
        }
        Ok(Forwarded {
            response: Response::from_parts(parts, Either::Left(body)),
            peer,
            tunnel,
        })
    }

    fn uri_for(
        &self,
        original: &Uri,
        path: &str,
        authority: Option<Authority>,
    ) -> Result<Uri, ForwardError> {
        let path_and_query = match original.path_and_query() {
            // Already normal (the usual case): reuse it, no copy and no parse.
            Some(pq) if pq.path() == path => pq.clone(),
            _ => {
                let text = match original.query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path.to_string(),
                };
                text.parse().map_err(|e| ForwardError {
                    refusal: Refusal::BadPath,
                    reason: format!("cannot build upstream URI: {e}"),
                })?
            }
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = self.base.scheme().cloned();
        parts.authority = authority.or_else(|| self.base.authority().cloned());
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).map_err(|e| ForwardError {
            refusal: Refusal::BadPath,
            reason: format!("cannot build upstream URI: {e}"),
        })
    }
}

fn classify(error: PoolError) -> ForwardError {
    match error {
        PoolError::Connect(connect) => ForwardError {
            refusal: match connect {
                ConnectError::Timeout(..) => Refusal::Timeout,
                _ => Refusal::Unreachable,
            },
            reason: connect.to_string(),
        },
        PoolError::Http(error) => ForwardError {
            refusal: Refusal::Unreachable,
            reason: chain(&error),
        },
        PoolError::ClientBody(_) => ForwardError {
            refusal: Refusal::ClientGone,
            reason: CLIENT_GONE_MID_BODY.to_owned(),
        },
        stalled @ PoolError::ClientStalled(_) => ForwardError {
            refusal: Refusal::ClientTimeout,
            reason: stalled.to_string(),
        },
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
