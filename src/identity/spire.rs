//! The `spire` identity source: streams X.509 contexts from the SPIFFE Workload API.
//!
//! It picks our SVID, keeps our trust domain's bundle and every federated one, and publishes
//! them on the [`IdentityHandle`] the moment they change. Faults (agent not running, no
//! identity issued, stream dropped) are retried with capped exponential backoff and logged
//! once per state change; the last good material stays in use meanwhile. An update without
//! the configured `spiffe_id` still brings its bundles in (trust follows the agent at once)
//! beside the SVID in hand. It never blocks listeners and never judges peers.

use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spiffe::transport::Endpoint;
use spiffe::{WorkloadApiClient, WorkloadApiError, X509Context};
use tokio_util::sync::CancellationToken;

use super::health::IdentityHealth;
use super::{IdentityError, IdentityHandle, Material, Svid, TrustBundles};
use crate::spiffe_id::SpiffeId;

/// First retry delay after a fault.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest retry delay: an agent restart must not outlast an SVID.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long connecting to the agent's socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the Workload API source cannot run at all.
#[derive(Debug, thiserror::Error)]
pub enum SpireError {
    /// The socket address is not one the Workload API client understands.
    #[error("identity.socket {socket:?}: {reason} (use unix:///path or tcp://ip:port)")]
    Endpoint { socket: String, reason: String },
}

/// Why one X.509 context could not be turned into material.
#[derive(Debug, thiserror::Error)]
enum UpdateError {
    #[error("the agent sent no SVID")]
    NoSvid,
    #[error("the agent sent no bundle for our trust domain {0}")]
    NoOwnBundle(String),
    #[error(transparent)]
    Material(#[from] IdentityError),
}

/// Where the source stands with the agent; each change is logged once.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Starting,
    Connected,
    WaitingForAgent(String),
    NoIdentity(String),
    StreamLost(String),
    BadUpdate(String),
    /// Updates arrive, but without the configured `spiffe_id`; the IDs they offer instead.
    NotIssued {
        wanted: String,
        offered: Vec<String>,
    },
}

/// What one X.509 context yields.
#[derive(Debug)]
enum Update {
    /// Our SVID and every bundle, to publish together.
    Full(Svid, TrustBundles),
    /// No SVID with the configured `spiffe_id` (withdrawn, or not issued yet), but valid
    /// bundles: trust must follow them even so.
    NotIssued {
        bundles: TrustBundles,
        wanted: String,
        offered: Vec<String>,
    },
}

/// A running Workload API source.
pub struct SpireSource {
    endpoint: Endpoint,
    socket: String,
    spiffe_id: Option<SpiffeId>,
    identity: IdentityHandle,
    health: IdentityHealth,
    state: State,
    /// The last context taken in, and the state it left us in.
    last: Option<(X509Context, State)>,
}

impl SpireSource {
    /// Checks the socket address; call [`SpireSource::run`] (spawned) to start streaming.
    pub fn new(
        socket: &str,
        spiffe_id: Option<SpiffeId>,
        identity: IdentityHandle,
        health: IdentityHealth,
    ) -> Result<Self, SpireError> {
        let endpoint = Endpoint::parse(socket).map_err(|e| SpireError::Endpoint {
            socket: socket.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            endpoint,
            socket: socket.to_string(),
            spiffe_id,
            identity,
            health,
            state: State::Starting,
            last: None,
        })
    }

    /// Streams from the agent until `shutdown`, reconnecting with backoff.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let fault = tokio::select! {
                fault = self.session(&mut backoff) => fault,
                _ = shutdown.cancelled() => return,
            };
            self.health.set_connected(false);
            self.transition(fault);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection: returns the state it ended in.
    async fn session(&mut self, backoff: &mut Duration) -> State {
        let connect = WorkloadApiClient::connect(self.endpoint.clone());
        let client = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => return self.fault(error, false),
            Err(_) => return State::WaitingForAgent("connecting timed out".into()),
        };
        let mut stream = match client.stream_x509_contexts().await {
            Ok(stream) => stream,
            Err(error) => return self.fault(error, false),
        };
        while let Some(item) = stream.next().await {
            match item {
                Ok(context) => {
                    *backoff = BACKOFF_MIN;
                    self.health.set_connected(true);
                    self.apply(context);
                }
                Err(
                    error @ (WorkloadApiError::NoIdentityIssued
                    | WorkloadApiError::PermissionDenied(_)
                    | WorkloadApiError::Transport(_)),
                ) => return self.fault(error, true),
                // A malformed message: keep the stream and the last good material.
                Err(error) => self.transition(State::BadUpdate(error.to_string())),
            }
        }
        State::StreamLost("the agent closed the stream".into())
    }

    /// Classifies an error from connecting (`streaming` false) or from the open stream.
    fn fault(&self, error: WorkloadApiError, streaming: bool) -> State {
        match error {
            WorkloadApiError::NoIdentityIssued | WorkloadApiError::PermissionDenied(_) => {
                State::NoIdentity(error.to_string())
            }
            _ if streaming || self.state == State::Connected => {
                State::StreamLost(error.to_string())
            }
            _ => State::WaitingForAgent(error.to_string()),
        }
    }

    /// Publishes a context when it differs from the one in use; a bad one is refused.
    fn apply(&mut self, context: X509Context) {
        if let Some((last, state)) = &self.last {
            if *last == context {
                let state = state.clone();
                if self.identity.current().is_some() {
                    self.health.confirmed(SystemTime::now());
                }
                self.transition(state);
                return;
            }
        }
        match material(&context, self.spiffe_id.as_ref()) {
            Ok(Update::Full(svid, bundles)) => {
                self.health.issued();
                let published = self.identity.publish(svid, bundles);
                self.health.confirmed(SystemTime::now());
                self.transition(State::Connected);
                debug_published(&published);
                self.last = Some((context, State::Connected));
            }
            Ok(Update::NotIssued {
                bundles,
                wanted,
                offered,
            }) => {
                self.health.not_issued(&wanted, &offered);
                let same_bundles = self
                    .last
                    .as_ref()
                    .is_some_and(|(last, _)| last.bundle_set() == context.bundle_set());
                if let Some(current) = self.identity.current() {
                    // Trust shrinks (or grows) with the agent's bundles at once; the SVID in
                    // hand stays until it expires, as when the agent is unreachable.
                    if !same_bundles {
                        debug_published(&self.identity.publish(kept(&current), bundles));
                    }
                    self.health.confirmed(SystemTime::now());
                }
                let state = State::NotIssued { wanted, offered };
                self.transition(state.clone());
                self.last = Some((context, state));
            }
            Err(error) => self.transition(State::BadUpdate(error.to_string())),
        }
    }

    /// Logs a change of state (not a repeat of the same one).
    fn transition(&mut self, state: State) {
        if state == self.state {
            return;
        }
        let socket = &self.socket;
        let serving = self.identity.current().map(|m| m.svid.serial.clone());
        match &state {
            State::Starting => {}
            State::Connected => tracing::info!(%socket, "Workload API: connected, receiving SVIDs"),
            State::WaitingForAgent(error) => {
                tracing::warn!(%socket, %error, serving_serial = ?serving,
                "Workload API: waiting for the SPIRE agent (retrying)")
            }
            State::NoIdentity(error) => tracing::warn!(%socket, %error, serving_serial = ?serving,
                "Workload API: no identity issued to this workload; check its registration entry (retrying)"),
            State::StreamLost(error) => tracing::warn!(%socket, %error, serving_serial = ?serving,
                "Workload API: stream lost; keeping the SVID in use (retrying)"),
            State::BadUpdate(error) => tracing::warn!(%socket, %error, serving_serial = ?serving,
                "Workload API: update refused; keeping the last good SVID and bundles"),
            State::NotIssued { wanted, offered } => tracing::warn!(%socket, %wanted,
                offered = %offered.join(","), serving_serial = ?serving,
                "Workload API: the configured spiffe_id is not among the SVIDs the agent sends; \
                 its bundles are applied, the SVID in hand is kept until it expires; not ready"),
        }
        self.state = state;
    }
}

/// Logs what was just published (debug).
fn debug_published(published: &Material) {
    tracing::debug!(
        spiffe_id = %published.svid.spiffe_id,
        serial = %published.svid.serial,
        trust_domains = %published.bundles.trust_domains().join(","),
        "identity update from the Workload API"
    );
}

/// The SVID in use, to publish again beside new bundles.
fn kept(current: &Material) -> Svid {
    Svid {
        spiffe_id: current.svid.spiffe_id.clone(),
        certified_key: current.svid.certified_key.clone(),
        serial: current.svid.serial.clone(),
        not_after: current.svid.not_after,
    }
}

/// Our SVID (the configured one, else the agent's default) and every bundle in the context;
/// only the bundles when the configured one is missing.
fn material(context: &X509Context, wanted: Option<&SpiffeId>) -> Result<Update, UpdateError> {
    let chosen = match wanted {
        None => context.default_svid().ok_or(UpdateError::NoSvid)?,
        Some(wanted) => match context
            .svids()
            .iter()
            .find(|s| s.spiffe_id().to_string() == wanted.as_str())
        {
            Some(chosen) => chosen,
            None => {
                return Ok(Update::NotIssued {
                    bundles: bundles(context, wanted.trust_domain_name())?,
                    wanted: wanted.to_string(),
                    offered: context
                        .svids()
                        .iter()
                        .map(|s| s.spiffe_id().to_string())
                        .collect(),
                })
            }
        },
    };
    let chain = chosen
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        chosen.private_key().as_bytes().to_vec(),
    ));
    let svid = Svid::from_der(chain, key)?;
    let bundles = bundles(context, svid.spiffe_id.trust_domain_name())?;
    Ok(Update::Full(svid, bundles))
}

/// Every bundle in the context; the one of our trust domain `own` must be there and valid.
fn bundles(context: &X509Context, own: &str) -> Result<TrustBundles, UpdateError> {
    let mut bundles = TrustBundles::default();
    for (trust_domain, bundle) in context.bundle_set().iter() {
        let certs: Vec<CertificateDer<'_>> = bundle
            .authorities()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes()))
            .collect();
        if let Err(error) = bundles.insert_der(trust_domain.as_str(), &certs) {
            if trust_domain.as_str() == own {
                return Err(error.into());
            }
            // A broken federated bundle must not stop our own rotation: peers from that
            // trust domain are refused (no bundle) until the agent sends a usable one.
            tracing::warn!(trust_domain = %trust_domain, %error, "federated bundle from the agent refused");
        }
    }
    if bundles.get(own).is_none() {
        return Err(UpdateError::NoOwnBundle(own.to_string()));
    }
    Ok(bundles)
}

#[cfg(test)]
#[path = "spire_tests.rs"]
mod tests;
