//! TCP (L4) relays: authorise a connection once by the peer's identity, then copy bytes.
//!
//! Inbound: the verified peer is judged by the listener's policy (which may only use
//! `from`, `not_from` and `expires`); a denied peer is cut before the upstream sees a byte.
//! Outbound: the local app's connection is carried over mTLS to the peer sidecar.
//! Half-close travels both ways: EOF on one side becomes a shutdown on the other.

use std::time::{Duration, Instant};

use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite};

use super::copy::{self, Ended};
use super::serve::{instant_of, Revoked};
use super::stream::Connector;
use super::Shared;
use crate::policy::{self, Policy, Verdict};
use crate::telemetry::DecisionRecord;
use crate::tls::PeerIdentity;

/// One relayed connection, for its decision line.
pub struct Relay<'a> {
    /// Listener name.
    pub listener: &'a str,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// Client identity (inbound: the peer; outbound: us).
    pub source: &'a str,
    /// Server identity (inbound: us; outbound: the peer, once known).
    pub destination: Option<&'a str>,
    /// Max connection age or peer certificate expiry, whichever is first (an upstream
    /// peer sidecar's certificate expiry is added once its handshake has told it).
    pub close_at: Option<Instant>,
    /// Fires when the policy no longer allows the peer (after a reload, or once the
    /// break-glass rule that let it in expires).
    pub revoked: Revoked,
    /// The relay is closed once no byte has moved either way for this long (the
    /// listener's `idle`).
    pub idle: Duration,
}

/// Judges an inbound TCP peer; the decision and whether to relay.
pub fn authorise(policy: &Policy, peer: &PeerIdentity) -> policy::Decision {
    static NO_HEADERS: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
    policy.evaluate(&policy::Request {
        source: &peer.spiffe_id,
        method: "",
        path: "/",
        headers: NO_HEADERS.get_or_init(HeaderMap::new),
    })
}

/// Connects to `upstream` and copies bytes both ways until both sides are done (or the
/// relay's `close_at` passes, it moves no byte for its `idle` timeout, or a reload or a
/// rule's expiry revokes it), then counts the connection in
/// `idgate_requests_total` and `idgate_request_duration_seconds` and writes its decision
/// line.
pub async fn relay<C>(
    shared: &Shared,
    relay: Relay<'_>,
    decision: &policy::Decision,
    version: Option<&str>,
    mut client: C,
    upstream: Connector,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let log_with = |decision: &policy::Decision,
                    destination: Option<&str>,
                    bytes: (u64, u64),
                    reason: Option<&str>| {
        let duration = started.elapsed().as_secs_f64();
        // The connection is the request: counted once, with its final decision.
        shared
            .requests
            .for_peer(relay.listener, relay.direction, relay.source)
            .record(decision.verdict, duration);
        shared.decisions.record(&DecisionRecord {
            listener: relay.listener,
            direction: relay.direction,
            source: Some(relay.source),
            destination,
            method: None,
            path: None,
            decision: decision.verdict.as_str(),
            rule: decision.rule.as_deref(),
            status: 0,
            duration_ms: duration * 1000.0,
            request_id: "",
            reason,
            policy_version: version,
            audit_rule: decision.audit_rule.as_deref(),
            break_glass: decision.break_glass,
            bytes_in: Some(bytes.0),
            bytes_out: Some(bytes.1),
        });
    };
    let log = |destination: Option<&str>, bytes: (u64, u64), reason: Option<&str>| {
        log_with(decision, destination, bytes, reason)
    };
    if let (Verdict::Deny, Some(reason)) = (decision.verdict, decision.denial_reason()) {
        tracing::info!(
            source = relay.source,
            rule = decision.rule.as_deref(),
            "TCP connection denied"
        );
        log(relay.destination, (0, 0), Some(&reason));
        return;
    }
    let mut server = match upstream.connect().await {
        Ok(server) => server,
        Err(error) => {
            tracing::warn!(%error, "TCP upstream unavailable");
            log(relay.destination, (0, 0), Some(&error.to_string()));
            return;
        }
    };
    let destination = server.peer().map(|p| p.spiffe_id.to_string());
    let destination = destination.as_deref().or(relay.destination);
    // Outbound: the peer sidecar's certificate bounds the relay as the client's does inbound.
    let server_expiry = server.peer().and_then(|p| instant_of(p.not_after));
    let close_at = relay.close_at.into_iter().chain(server_expiry).min();
    let mut transfer = copy::BothWays::new(relay.idle);
    let deadline = async {
        match close_at {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        copied = transfer.run(&mut client, &mut server) => match copied {
            Ok(Ended::Done) => log(destination, transfer.copied(), None),
            Ok(Ended::Idle) => {
                let idle = relay.idle;
                tracing::info!(source = relay.source, "closing TCP relay: no bytes either way for {idle:?}");
                log(destination, transfer.copied(), Some(&format!("closed: idle, no bytes either way for {idle:?}")));
            }
            Err(error) => {
                tracing::debug!(%error, "TCP relay ended with an error");
                log(destination, transfer.copied(), Some(&format!("relay: {error}")));
            }
        },
        reason = relay.revoked => {
            tracing::info!(source = relay.source, "closing TCP relay: {reason}");
            let revoked = policy::Decision { verdict: Verdict::Deny, ..decision.clone() };
            log_with(&revoked, destination, transfer.copied(), Some(&reason));
        }
        () = deadline => {
            tracing::info!("closing TCP relay: maximum age or peer certificate expiry reached");
            log(destination, transfer.copied(), Some("closed: maximum connection age or peer certificate expiry"));
        }
    }
}
