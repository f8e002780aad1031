//! Outbound listener: plain HTTP from the local app, mTLS with our SVID to the peer sidecar.
//!
//! The peer must present one of `server_ids`, checked in the handshake by `tls`; a wrong
//! identity aborts the handshake and the app gets a 502. Connections to the peer are
//! pooled and use HTTP/2 when ALPN agrees.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use scopeguard::ScopeGuard;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::forward::{Forwarded, Upstream};
use super::headers::{settle_host, strip_request_hop_by_hop, XFCC};
use super::http_server::{Ending, HttpServer};
use super::in_flight::Cut;
use super::request_id::ensure_request_id;
use super::respond::{is_grpc, log_if_abandoned, refusal, Body, Refusal};
use super::serve::{accept_loop, never_revoked, Lifetime};
use super::stream::Connector;
use super::tcp;
use super::tunnel::TunnelSlot;
use super::Shared;
use crate::config::{Limits, Outbound, Protocol, Timeouts};
use crate::policy::{Decision, Verdict};
use crate::telemetry::requests::PeerCounters;
use crate::telemetry::DecisionRecord;
use crate::tls::{self, PeerCheck};

const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];
const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];

/// A bound outbound listener, ready to serve.
pub struct OutboundListener {
    listener: TcpListener,
    state: Arc<ListenerState>,
}

struct ListenerState {
    name: String,
    peer: Upstream,
    connector: Connector,
    protocol: Protocol,
    http: HttpServer,
    timeouts: Timeouts,
    limits: Limits,
    shared: Shared,
}

impl OutboundListener {
    /// Binds the listener (nothing is accepted until [`OutboundListener::run`]).
    pub async fn bind(config: &Outbound, shared: &Shared) -> io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let client_config = tls::client_config(
            shared.identity.clone(),
            config.server_ids.clone(),
            ALPN,
            config.session_resumption,
        );
        let resumed = shared.tls.resumed(&config.name);
        let failures = shared.tls.dialed(&config.name);
        let servers = PeerCheck::servers(shared.identity.clone(), &config.server_ids);
        let connector = Connector::mtls(
            &config.target,
            client_config,
            servers.clone(),
            config.timeouts.connect.0,
            resumed.clone(),
            failures.clone(),
        );
        // WebSocket needs HTTP/1.1 to the peer (HTTP/2 extended CONNECT is not supported yet).
        let h1_config = tls::client_config(
            shared.identity.clone(),
            config.server_ids.clone(),
            ALPN_HTTP1,
            config.session_resumption,
        );
        let upgrades = Connector::mtls(
            &config.target,
            h1_config,
            servers,
            config.timeouts.connect.0,
            resumed,
            failures,
        );
        let base: Uri = format!("https://{}", config.target)
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let peer = Upstream::new(
            connector.clone(),
            base,
            &config.timeouts,
            shared.workers.count(),
        )
        .with_upgrades(upgrades);
        tokio::spawn(fresh_connections_on_rotation(peer.clone(), shared.clone()));
        let state = ListenerState {
            name: config.name.clone(),
            peer,
            connector,
            protocol: config.protocol,
            http: HttpServer::new(&config.timeouts, &config.limits, &shared.tasks),
            timeouts: config.timeouts,
            limits: config.limits,
            shared: shared.clone(),
        };
        Ok(Self {
            listener,
            state: Arc::new(state),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts and serves connections until shutdown.
    pub async fn run(self) {
        let state = self.state;
        let shared = state.shared.clone();
        let max_connections = state.limits.max_connections;
        accept_loop(
            self.listener,
            &state.name.clone(),
            max_connections,
            &shared,
            move |tcp, addr| {
                let state = state.clone();
                let span = tracing::info_span!("conn", listener = %state.name, peer.addr = %addr);
                state.serve_connection(tcp).instrument(span)
            },
        )
        .await;
    }
}

/// Our SVID changed: connections to the peer opened with the old one are not reused, so
/// a pooled connection never outlives the certificate it presented (the peer would close
/// it at expiry, racing with requests sent on it).
async fn fresh_connections_on_rotation(peer: Upstream, shared: Shared) {
    let mut updates = shared.identity.subscribe();
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            changed = updates.changed() => {
                if changed.is_err() {
                    return;
                }
                tracing::debug!("new identity material: new connections to the peer from now on");
                peer.refresh();
            }
        }
    }
}

/// One connection from the local app.
struct Connection {
    state: Arc<ListenerState>,
    own_id: String,
    counters: PeerCounters,
    /// An accepted upgrade, run by the connection's task once HTTP is done with it.
    tunnel: TunnelSlot,
    /// Marked when the connection is closed under its open requests.
    cut: Cut,
}

impl ListenerState {
    async fn serve_connection(self: Arc<Self>, tcp: TcpStream) {
        let _open = self.shared.requests.connection(&self.name);
        let own_id = self.shared.own_id();
        if self.protocol == Protocol::Tcp {
            let relay = tcp::Relay {
                listener: &self.name,
                direction: "outbound",
                source: &own_id,
                destination: None,
                close_at: Lifetime::new(&self.timeouts, &self.limits, None).close_at,
                revoked: never_revoked(),
                idle: self.timeouts.idle.0,
            };
            let allow = Decision {
                verdict: Verdict::Allow,
                rule: None,
                audit_rule: None,
                break_glass: false,
            };
            let upstream = self.connector.clone();
            // Boxed, as on the inbound: the relay's state would otherwise size every HTTP
            // connection's task too.
            Box::pin(tcp::relay(&self.shared, relay, &allow, None, tcp, upstream)).await;
            return;
        }
        let connection = Arc::new(Connection {
            counters: self
                .shared
                .requests
                .for_peer(&self.name, "outbound", &own_id),
            state: self.clone(),
            own_id,
            tunnel: TunnelSlot::default(),
            cut: Cut::default(),
        });
        let served = connection.clone();
        let service = service_fn(move |request| {
            let connection = served.clone();
            async move { Ok::<_, Infallible>(connection.handle(request).await) }
        });
        let lifetime = Lifetime::new(&self.timeouts, &self.limits, None);
        let ending = Ending {
            lifetime,
            revoked: never_revoked(),
            shutdown: &self.shared.shutdown,
            cut: &connection.cut,
        };
        self.http.serve_plain(tcp, service, ending).await;
        // An upgraded connection lives on as a tunnel, still this connection.
        connection.tunnel.run(lifetime.close_at).await;
    }
}

impl Connection {
    async fn handle(&self, mut request: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        // First: the app's `Connection` may name the `x-request-id` idgate adds.
        strip_request_hop_by_hop(request.headers_mut());
        // An app cannot vouch for a client certificate: a peer that forwards XFCC (Envoy
        // with APPEND_FORWARD, say) would pass a forged identity on (Envoy's default,
        // SANITIZE, drops it too).
        request.headers_mut().remove(XFCC);
        let request_id = ensure_request_id(request.headers_mut());
        let grpc = is_grpc(request.headers());
        let uri = request.uri().clone();
        let method = request.method().clone();
        // No policy judges outbound requests: `allow`, but for a request idgate refuses
        // itself (a bad Host), a `deny` as the inbound logs it.
        let line =
            |verdict: Verdict, status: u16, destination: Option<&str>, reason: Option<&str>| {
                let elapsed = started.elapsed().as_secs_f64();
                self.counters.record(verdict, elapsed);
                self.state.shared.decisions.record(&DecisionRecord {
                    listener: &self.state.name,
                    direction: "outbound",
                    source: Some(&self.own_id),
                    destination,
                    method: Some(method.as_str()),
                    path: Some(uri.path()),
                    decision: verdict.as_str(),
                    rule: None,
                    status,
                    duration_ms: elapsed * 1000.0,
                    request_id: request_id.as_str(),
                    reason,
                    policy_version: None,
                    audit_rule: None,
                    break_glass: false,
                    bytes_in: None,
                    bytes_out: None,
                });
            };
        // As the inbound does, so the peer's policy judges the Host the app sent.
        let authority = match settle_host(request.version(), &uri, request.headers_mut()) {
            Ok(authority) => authority,
            Err(error) => {
                let response = refusal(Refusal::BadHost, &request_id, grpc);
                line(
                    Verdict::Deny,
                    response.status().as_u16(),
                    None,
                    Some(&error.to_string()),
                );
                return response;
            }
        };
        let abandoned =
            log_if_abandoned(&self.cut, &self.state.shared.requests, |status, reason| {
                line(Verdict::Allow, status, None, Some(reason));
            });
        let forwarded = self
            .state
            .peer
            .forward(request, uri.path(), authority, None)
            .await;
        ScopeGuard::into_inner(abandoned);
        let (response, peer, reason) = match forwarded {
            Ok(Forwarded {
                response,
                peer,
                tunnel,
            }) => {
                if let Some(tunnel) = tunnel {
                    self.tunnel.put(tunnel);
                }
                (response, peer, None)
            }
            Err(error) => {
                error.log("peer sidecar unavailable");
                (
                    refusal(error.refusal, &request_id, grpc),
                    None,
                    Some(error.reason),
                )
            }
        };
        let destination = peer.as_ref().map(|peer| peer.spiffe_id.as_str());
        line(
            Verdict::Allow,
            response.status().as_u16(),
            destination,
            reason.as_deref(),
        );
        response
    }
}
