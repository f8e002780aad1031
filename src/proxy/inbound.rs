//! Inbound listener: terminates mTLS, judges each request by the policy, forwards to the app.

use std::convert::Infallible;
use std::fmt::Display;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::HeaderValue;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use prometheus_client::metrics::counter::Counter;
use rustls::HandshakeKind;
use scopeguard::ScopeGuard;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use super::coalesce::Coalesce;
use super::forward::{Forwarded, Upstream};
use super::headers::{set_xfcc, settle_host, strip_request_hop_by_hop, xfcc_value};
use super::http_server::{Agreed, Ending, HttpServer};
use super::in_flight::Cut;
use super::request_id::{ensure_request_id, RequestId};
use super::respond::{is_grpc, log_if_abandoned, refusal, Body, Refusal};
use super::revocation::revocation;
use super::serve::{accept_loop, Lifetime};
use super::stream::{Connector, Endpoint};
use super::tcp;
use super::tunnel::TunnelSlot;
use super::Shared;
use crate::config::{self, Inbound, Limits, Protocol, Timeouts};
use crate::policy::{self, normalize_path, Decision, PolicyHandle, Verdict};
use crate::telemetry::requests::PeerCounters;
use crate::telemetry::DecisionRecord;
use crate::tls::{self, PeerCheck, PeerIdentity};

const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A bound inbound listener, ready to serve.
pub struct InboundListener {
    listener: TcpListener,
    state: Arc<ListenerState>,
}

struct ListenerState {
    name: String,
    acceptor: TlsAcceptor,
    /// What a resumed session's client must still pass.
    clients: PeerCheck,
    policy: PolicyHandle,
    upstream: Upstream,
    connector: Connector,
    /// `idgate_tls_sessions_resumed_total` for this listener.
    resumed: Counter,
    protocol: Protocol,
    http: HttpServer,
    timeouts: Timeouts,
    limits: Limits,
    shared: Shared,
}

/// One mTLS connection: the verified peer and what every request on it reuses.
struct Connection {
    state: Arc<ListenerState>,
    peer: PeerIdentity,
    own_id: String,
    xfcc: Option<HeaderValue>,
    counters: PeerCounters,
    /// An accepted upgrade, run by the connection's task once HTTP is done with it.
    tunnel: TunnelSlot,
    /// Marked when the connection is closed under its open requests.
    cut: Cut,
}

impl InboundListener {
    /// Binds the listener (nothing is accepted until [`InboundListener::run`]).
    pub async fn bind(config: &Inbound, shared: &Shared) -> io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let (endpoint, base) = match &config.upstream {
            config::Upstream::Tcp { authority, .. } => (
                Endpoint::Tcp(authority.clone()),
                format!("http://{authority}"),
            ),
            config::Upstream::Unix(path) => {
                (Endpoint::Unix(path.clone()), "http://localhost".into())
            }
        };
        let base: Uri = base
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let connector = Connector::plain(endpoint, config.timeouts.connect.0);
        let state = ListenerState {
            name: config.name.clone(),
            acceptor: TlsAcceptor::from(tls::server_config(
                shared.identity.clone(),
                ALPN,
                config.session_resumption,
            )),
            clients: PeerCheck::clients(shared.identity.clone()),
            policy: PolicyHandle::new(config.policy.clone()),
            upstream: Upstream::new(
                connector.clone(),
                base,
                &config.timeouts,
                shared.workers.count(),
            )
            .with_grpc_h2c(connector.clone()),
            connector,
            resumed: shared.tls.resumed(&config.name),
            protocol: config.protocol,
            http: HttpServer::new(&config.timeouts, &config.limits, &shared.tasks),
            limits: config.limits,
            timeouts: config.timeouts,
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

    /// The policy in force, swappable for reloads.
    pub fn policy(&self) -> PolicyHandle {
        self.state.policy.clone()
    }

    /// Accepts and serves connections until shutdown.
    pub async fn run(self) {
        let state = self.state;
        let shared = state.shared.clone();
        let max_connections = state.limits.max_connections;
        accept_loop(self.listener, &state.name.clone(), max_connections, &shared, move |tcp, addr| {
            let state = state.clone();
            let span = tracing::info_span!("conn", listener = %state.name, peer.addr = %addr, peer.id = tracing::field::Empty);
            state.serve_connection(tcp, addr).instrument(span)
        })
        .await;
    }
}

impl ListenerState {
    async fn serve_connection(self: Arc<Self>, tcp: TcpStream, addr: SocketAddr) {
        let _open = self.shared.requests.connection(&self.name);
        // Boxed, so the handshake's state does not size the task for the connection's life.
        let accept = Box::pin(self.acceptor.accept(tcp));
        let handshake = tokio::time::timeout(self.timeouts.handshake.0, accept);
        // Boxed too: the stream (1.2 KiB) would otherwise keep a slot in the task for the
        // connection's life, even after it has moved into the HTTP server.
        let tls = match handshake.await {
            Ok(Ok(tls)) => Box::new(tls),
            Ok(Err(error)) => {
                self.shared.tls.handshake_failed(&self.name, addr, &error);
                return;
            }
            Err(_) => {
                let error = io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out");
                self.shared.tls.handshake_failed(&self.name, addr, &error);
                return;
            }
        };
        let session = tls.get_ref().1;
        let peer = match PeerIdentity::of_connection(session, &self.clients) {
            Ok(Some(peer)) => peer,
            Ok(None) => {
                tracing::warn!("handshake completed without a usable peer certificate");
                return;
            }
            Err(error) => {
                self.shared.tls.handshake_failed(&self.name, addr, &error);
                return;
            }
        };
        if session.handshake_kind() == Some(HandshakeKind::Resumed) {
            self.resumed.inc();
        }
        tracing::Span::current().record("peer.id", peer.spiffe_id.as_str());
        let own_id = self.shared.own_id();
        if self.protocol == Protocol::Tcp {
            // Before the judgement: an expiry after it must wake the watcher.
            let judged_at = SystemTime::now();
            let policy = self.policy.load();
            let decision = tcp::authorise(&policy, &peer);
            policy.record(&decision);
            let judged = peer.clone();
            let relay = tcp::Relay {
                listener: &self.name,
                direction: "inbound",
                source: peer.spiffe_id.as_str(),
                destination: Some(&own_id),
                close_at: Lifetime::new(&self.timeouts, &self.limits, Some(peer.not_after))
                    .close_at,
                revoked: revocation(self.policy.clone(), judged_at, move |policy| {
                    tcp::authorise(policy, &judged).verdict.passes()
                }),
                idle: self.timeouts.idle.0,
            };
            let upstream = self.connector.clone();
            let version = Some(policy.version());
            // Boxed: the relay's state (a TLS stream and two copy buffers' bookkeeping)
            // would otherwise size every HTTP connection's task too. `*{ tls }`: see below.
            let relayed = Box::pin(tcp::relay(
                &self.shared,
                relay,
                &decision,
                version,
                *{ tls },
                upstream,
            ));
            relayed.await;
            return;
        }
        let lifetime = Lifetime::new(&self.timeouts, &self.limits, Some(peer.not_after));
        let source = peer.spiffe_id.clone();
        let revoked = revocation(self.policy.clone(), SystemTime::now(), move |policy| {
            policy.admits(&source)
        });
        let connection = Arc::new(Connection {
            xfcc: xfcc_value(&own_id, &peer.leaf_sha256, peer.spiffe_id.as_str()),
            counters: self
                .shared
                .requests
                .for_peer(&self.name, "inbound", peer.spiffe_id.as_str()),
            state: self.clone(),
            peer,
            own_id,
            tunnel: TunnelSlot::default(),
            cut: Cut::default(),
        });
        let served = connection.clone();
        // Boxed: hyper keeps a slot the size of the service's future in every HTTP/1.1
        // connection, idle or not; the request's state lives only while it is in flight.
        let service = service_fn(move |request| {
            let connection = served.clone();
            Box::pin(async move { Ok::<_, Infallible>(connection.handle(request).await) })
        });
        let agreed = Agreed::from_alpn(tls.get_ref().1.alpn_protocol());
        let ending = Ending {
            lifetime,
            revoked,
            shutdown: &self.shared.shutdown,
            cut: &connection.cut,
        };
        // `{ tls }` moves the box into a temporary, freed at the end of this statement with
        // the stream moved out; `*tls` would keep the emptied box (608 bytes) until this
        // function returns: for the connection's whole life.
        let io = Coalesce::new(*{ tls });
        self.http.serve_agreed(agreed, io, service, ending).await;
        // An upgraded connection lives on as a tunnel, still this connection.
        connection.tunnel.run(lifetime.close_at).await;
    }
}

impl Connection {
    async fn handle(&self, mut request: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        // First: the client's `Connection` may name the headers idgate adds.
        strip_request_hop_by_hop(request.headers_mut());
        let request_id = ensure_request_id(request.headers_mut());
        let grpc = is_grpc(request.headers());
        let uri = request.uri().clone();
        let method = request.method().clone();
        let mut log = Log {
            connection: self,
            started,
            method: method.as_str(),
            path: uri.path(),
            request_id: &request_id,
        };
        let path = match normalize_path(uri.path()) {
            Ok(path) => path,
            Err(error) => return log.refuse_unjudged(Refusal::BadPath, &error, grpc),
        };
        log.path = &path;
        // The policy judges the Host the app will receive.
        let authority = match settle_host(request.version(), &uri, request.headers_mut()) {
            Ok(authority) => authority,
            Err(error) => return log.refuse_unjudged(Refusal::BadHost, &error, grpc),
        };
        // Read only for an upgrade, before its judgement: the tunnel's watcher starts there.
        let upgrade_judged_at = is_upgrade(request.headers()).then(SystemTime::now);
        let policy = self.state.policy.load();
        let judged = policy::Request {
            source: &self.peer.spiffe_id,
            method: method.as_str(),
            path: &path,
            headers: request.headers(),
        };
        let decision = policy.evaluate(&judged);
        policy.record(&decision);
        let denial = decision.denial_reason();
        if let Some(reason) = &denial {
            let rule = decision.rule.as_deref();
            tracing::info!(source = %self.peer.spiffe_id, %method, %path, rule, decision = decision.verdict.as_str(), "{reason}");
            if tracing::enabled!(tracing::Level::DEBUG) {
                let why = policy.explain(&judged, &decision, std::time::SystemTime::now());
                tracing::debug!(source = %self.peer.spiffe_id, %method, %path, "{why}");
            }
        }
        if !decision.verdict.passes() {
            log.write(&decision, 403, denial.as_deref(), Some(policy.version()));
            return refusal(Refusal::Denied, &request_id, grpc);
        }
        if let Some(xfcc) = &self.xfcc {
            set_xfcc(request.headers_mut(), xfcc.clone());
        }
        let revoked = upgrade_judged_at.map(|judged_at| {
            let (source, method, path, headers) = (
                self.peer.spiffe_id.clone(),
                method.clone(),
                path.to_string(),
                request.headers().clone(),
            );
            revocation(self.state.policy.clone(), judged_at, move |policy| {
                let again = policy::Request {
                    source: &source,
                    method: method.as_str(),
                    path: &path,
                    headers: &headers,
                };
                policy.evaluate(&again).verdict.passes()
            })
        });
        let abandoned =
            log_if_abandoned(&self.cut, &self.state.shared.requests, |status, reason| {
                log.write(&decision, status, Some(reason), Some(policy.version()));
            });
        let forwarded = self
            .state
            .upstream
            .forward(request, &path, authority, revoked)
            .await;
        ScopeGuard::into_inner(abandoned);
        match forwarded {
            Ok(Forwarded {
                response, tunnel, ..
            }) => {
                if let Some(tunnel) = tunnel {
                    self.tunnel.put(tunnel);
                }
                let status = response.status().as_u16();
                log.write(&decision, status, denial.as_deref(), Some(policy.version()));
                response
            }
            Err(error) => {
                error.log("upstream failed");
                let status = error.refusal.status().as_u16();
                log.write(
                    &decision,
                    status,
                    Some(&error.reason),
                    Some(policy.version()),
                );
                refusal(error.refusal, &request_id, grpc)
            }
        }
    }
}

/// Whether a request asks to switch protocols (WebSocket and the like).
fn is_upgrade(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::UPGRADE)
}

/// The parts of a decision line known before the decision.
struct Log<'a> {
    connection: &'a Connection,
    started: Instant,
    method: &'a str,
    path: &'a str,
    request_id: &'a RequestId,
}

impl Log<'_> {
    /// Refuses a request the policy cannot judge (its path or its `Host`) with 400, and
    /// logs it as denied by no rule.
    fn refuse_unjudged(&self, kind: Refusal, why: &dyn Display, grpc: bool) -> Response<Body> {
        let refused = Decision {
            verdict: Verdict::Deny,
            rule: None,
            audit_rule: None,
            break_glass: false,
        };
        self.write(&refused, 400, Some(&why.to_string()), None);
        refusal(kind, self.request_id, grpc)
    }

    fn write(&self, decision: &Decision, status: u16, reason: Option<&str>, version: Option<&str>) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let c = self.connection;
        c.counters.record(decision.verdict, elapsed);
        c.state.shared.decisions.record(&DecisionRecord {
            listener: &c.state.name,
            direction: "inbound",
            source: Some(c.peer.spiffe_id.as_str()),
            destination: Some(&c.own_id),
            method: Some(self.method),
            path: Some(self.path),
            decision: decision.verdict.as_str(),
            rule: decision.rule.as_deref(),
            status,
            duration_ms: elapsed * 1000.0,
            request_id: self.request_id.as_str(),
            reason,
            policy_version: version,
            audit_rule: decision.audit_rule.as_deref(),
            break_glass: decision.break_glass,
            bytes_in: None,
            bytes_out: None,
        });
    }
}
