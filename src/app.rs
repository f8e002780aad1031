//! Wiring: builds every room from a checked config, binds, serves, and drains on shutdown.
//!
//! The one file that touches every room; it holds no logic of its own beyond order:
//! identity first, then telemetry, then listeners, then admin.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState, Readiness};
use crate::config::{Config, IdentityConfig, Protocol};
use crate::identity::files::Fingerprint;
use crate::identity::spire::SpireSource;
use crate::identity::{self, HealthSettings, IdentityHandle, IdentityHealth, IdentityMetrics};
use crate::policy::RuleHits;
use crate::proxy::{InboundListener, OutboundListener, Shared, Workers};
use crate::reload::{IdentityFiles, PolicySlot, ReloadMetrics, Reloader};
use crate::telemetry::{diagnostics, DecisionLog, RequestMetrics};
use crate::tls::TlsMetrics;

/// A running sidecar.
pub struct App {
    /// Bound inbound addresses, in config order.
    pub inbound: Vec<SocketAddr>,
    /// Bound outbound addresses, in config order.
    pub outbound: Vec<SocketAddr>,
    /// Bound admin address.
    pub admin: SocketAddr,
    /// The identity in use.
    pub identity: IdentityHandle,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    workers: Arc<Workers>,
    decisions: DecisionLog,
    requests: RequestMetrics,
    drain_timeout: Duration,
    admin_stop: CancellationToken,
}

/// How long a drain waits for the decision log's last lines to be written.
const DECISION_LOG_FINISH: Duration = Duration::from_secs(5);
/// How long a timed-out drain waits beyond it for the connections it closed to drop
/// (and log) the requests they were closed under.
const CUT_GRACE: Duration = Duration::from_secs(1);

/// Starts a sidecar: loads the identity, binds every listener, and serves in the background
/// (on the calling runtime and `[runtime] workers - 1` threads of its own). It takes the
/// config, so nothing of it outlives the start: the listeners hold the compiled policies,
/// and the first reload frees the one loaded with the config.
pub async fn start(config: Config) -> anyhow::Result<App> {
    let mut registry = Registry::default();
    let workers = Arc::new(
        Workers::start(config.runtime.workers).context("cannot start the worker threads")?,
    );
    let shutdown = CancellationToken::new();
    let (identity, health, in_force) = start_identity(&config.identity, &mut registry, &shutdown)?;
    tokio::spawn(health.clone().watch(identity.clone(), shutdown.clone()));
    let shared = Shared {
        identity: identity.clone(),
        decisions: DecisionLog::open(config.log.decisions.get_ref(), &mut registry)?,
        requests: RequestMetrics::register(&mut registry),
        tls: TlsMetrics::register(&mut registry),
        shutdown,
        tasks: TaskTracker::new(),
        workers: workers.clone(),
    };
    tokio::spawn(IdentityMetrics::register(&mut registry).follow(identity.clone()));
    diagnostics::register(&mut registry);
    let reopen = shared.decisions.reopen_on_hangup(shared.shutdown.clone());
    tokio::spawn(reopen.context("cannot watch SIGHUP to reopen the decision log")?);

    let readiness = Readiness::default();
    let binding = readiness.pending("binding listeners");
    let mut inbound = Vec::new();
    let mut policies = Vec::new();
    for listener in &config.inbound {
        let bound = InboundListener::bind(listener, &shared)
            .await
            .with_context(|| {
                format!(
                    "inbound {}: cannot listen on {}",
                    listener.name, listener.listen
                )
            })?;
        inbound.push(bound.local_addr()?);
        policies.push(PolicySlot {
            listener: listener.name.clone(),
            path: listener.policy_path.clone(),
            policy: bound.policy(),
            tcp_only: listener.protocol == Protocol::Tcp,
        });
        tokio::spawn(bound.run());
    }
    let mut outbound = Vec::new();
    for listener in &config.outbound {
        let bound = OutboundListener::bind(listener, &shared)
            .await
            .with_context(|| {
                format!(
                    "outbound {}: cannot listen on {}",
                    listener.name, listener.listen
                )
            })?;
        outbound.push(bound.local_addr()?);
        tokio::spawn(bound.run());
    }
    let rule_hits = RuleHits::new(
        policies
            .iter()
            .map(|slot| (slot.listener.clone(), slot.policy.slot()))
            .collect(),
    );
    rule_hits.register(&mut registry);
    let reloader = Reloader::new(
        policies,
        identity_files(&config.identity, &identity, in_force),
        ReloadMetrics::register(&mut registry),
    );
    tokio::spawn(reloader.run(shared.shutdown.clone()));
    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("admin: cannot listen on {}", config.admin.listen))?;
    let admin = admin_listener.local_addr()?;
    let admin_stop = CancellationToken::new();
    tokio::spawn(admin::serve(
        admin_listener,
        AdminState {
            registry: Arc::new(registry),
            identity: identity.clone(),
            health,
            readiness,
            shutdown: shared.shutdown.clone(),
            rule_hits,
        },
        admin_stop.clone(),
    ));
    drop(binding);
    tracing::info!(?inbound, ?outbound, %admin, workers = workers.count(), spiffe_id = ?identity.current().map(|m| m.svid.spiffe_id.to_string()), "idgate running");
    Ok(App {
        inbound,
        outbound,
        admin,
        identity,
        shutdown: shared.shutdown,
        tasks: shared.tasks,
        workers,
        decisions: shared.decisions,
        requests: shared.requests,
        drain_timeout: config.drain_timeout(),
        admin_stop,
    })
}

/// Starts the identity source; listeners may bind before it has an SVID (they refuse
/// handshakes until then, and `/readyz` says what it waits for). For `files`, also the
/// fingerprint of the bytes loaded, so the reloader sees any later rewrite.
fn start_identity(
    config: &IdentityConfig,
    registry: &mut Registry,
    shutdown: &CancellationToken,
) -> anyhow::Result<(IdentityHandle, IdentityHealth, Option<Fingerprint>)> {
    match config {
        IdentityConfig::Files {
            cert,
            key,
            bundle,
            federation,
        } => {
            let handle = IdentityHandle::new(format!("files {}", cert.display()));
            let loaded = identity::files::Contents::read(cert, key, bundle, federation).load()?;
            handle.publish(loaded.svid, loaded.bundles);
            let health = IdentityHealth::new(HealthSettings::files());
            Ok((handle, health, Some(loaded.fingerprint)))
        }
        IdentityConfig::Spire {
            socket,
            spiffe_id,
            expiry_margin,
            max_bundle_age,
        } => {
            let handle = IdentityHandle::new(socket.clone());
            let health = IdentityHealth::new(HealthSettings {
                expiry_margin: *expiry_margin,
                max_bundle_age: Some(*max_bundle_age),
            });
            health.register(registry);
            let source =
                SpireSource::new(socket, spiffe_id.clone(), handle.clone(), health.clone())?;
            tokio::spawn(source.run(shutdown.clone()));
            Ok((handle, health, None))
        }
    }
}

/// The files a `files` identity is reloaded from (none for SPIRE, which streams updates).
fn identity_files(
    config: &IdentityConfig,
    handle: &IdentityHandle,
    in_force: Option<Fingerprint>,
) -> Option<IdentityFiles> {
    match (config, in_force) {
        (
            IdentityConfig::Files {
                cert,
                key,
                bundle,
                federation,
            },
            Some(in_force),
        ) => Some(IdentityFiles {
            in_force,
            handle: handle.clone(),
            cert: cert.clone(),
            key: key.clone(),
            bundle: bundle.clone(),
            federation: federation.clone(),
        }),
        _ => None,
    }
}

impl App {
    /// Stops accepting, lets open requests finish within the drain timeout, then writes
    /// out the decision log's last lines; true when all requests finished. Requests the
    /// drain cut have their decision lines (status 503) among those last lines.
    pub async fn drain(self) -> bool {
        let cut_before = self.requests.cut_so_far();
        self.shutdown.cancel();
        self.tasks.close();
        let drained = tokio::time::timeout(self.drain_timeout, self.tasks.wait())
            .await
            .is_ok();
        if !drained {
            // Each connection closes itself under its open requests when its listener's
            // drain passes, about now: their lines must be queued before the log ends.
            let _ = tokio::time::timeout(CUT_GRACE, self.tasks.wait()).await;
            let cut = self.requests.cut_so_far().saturating_sub(cut_before);
            tracing::warn!(timeout = ?self.drain_timeout, cut, "drain timed out; connections still open were closed, cutting {cut} request(s) (logged with status 503)");
        }
        self.admin_stop.cancel();
        let decisions = self.decisions.clone();
        let written = tokio::task::spawn_blocking(move || decisions.finish(DECISION_LOG_FINISH))
            .await
            .unwrap_or(false);
        if !written {
            tracing::warn!(timeout = ?DECISION_LOG_FINISH, "the decision log's last lines were not written in time");
        }
        drained
    }
}

impl Drop for App {
    /// The worker threads end with the sidecar (drained or not).
    fn drop(&mut self) {
        self.workers.stop();
    }
}

/// SIGTERM and SIGINT, watched from the moment this is built (install it before
/// announcing readiness, so an early signal still drains instead of killing the process).
pub struct ShutdownSignals {
    term: Signal,
    interrupt: Signal,
}

impl ShutdownSignals {
    /// Starts watching both signals.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for either signal.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM: draining"),
            _ = self.interrupt.recv() => tracing::info!("SIGINT: draining"),
        }
    }
}
