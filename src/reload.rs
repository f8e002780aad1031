//! Hot reload: policy files and `files` identity, on change (notify) and on SIGHUP.
//!
//! Watches the parent directory of every file (editors rename over files; Kubernetes
//! swaps a `..data` symlink), so a change is seen within a second. A reload waits until
//! the files have been quiet for [`QUIET`] (at most [`MAX_WAIT`]), so a file being
//! written is not read half-way. A file that fails to parse or validate, or a policy file
//! that is empty, is refused with a logged `file:line: field:` error and the last good
//! version stays in force; a later good write is picked up. Each swap is one atomic
//! store, so every request is judged by exactly one policy version.

use std::collections::{BTreeSet, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::SourceFile;
use crate::identity::files::{Contents, Fingerprint};
use crate::identity::{self, IdentityHandle};
use crate::policy::{Policy, PolicyHandle};

/// A reload waits until no file event came for this long (each event restarts the wait):
/// `render > policy.toml` truncates the file first, and a slow writer pauses between
/// writes; reading right after the first event would load what was written so far.
const QUIET: Duration = Duration::from_millis(200);

/// ...but never longer than this after the first event, so a file written without pause
/// is still reloaded within SPEC's second.
const MAX_WAIT: Duration = Duration::from_millis(700);
/// How often a replaced policy that requests still held is checked again, to fold its
/// hit counts in and free it.
const SETTLE_EVERY: Duration = Duration::from_millis(500);

/// One inbound listener's policy file and the slot requests read it from.
pub struct PolicySlot {
    /// Listener name, for logs.
    pub listener: String,
    /// The policy file.
    pub path: PathBuf,
    /// What requests load.
    pub policy: PolicyHandle,
    /// TCP listeners accept only identity rules.
    pub tcp_only: bool,
}

impl PolicySlot {
    /// Whether the file now holds other content than the policy in force (unreadable
    /// counts as changed: the reload reports it).
    fn changed_on_disk(&self) -> bool {
        SourceFile::read(&self.path).map_or(true, |source| {
            Policy::version_of(&source.text) != self.policy.load().version()
        })
    }
}

/// The `files` identity to reload.
pub struct IdentityFiles {
    /// Fingerprint of the bytes the identity in force was built from (from
    /// [`Contents::load`]), not of the files as they are now: a
    /// rewrite after that load differs from it, whenever it happened.
    pub in_force: Fingerprint,
    /// Where new material is published.
    pub handle: IdentityHandle,
    /// Chain, leaf first.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// Our trust domain's bundle.
    pub bundle: PathBuf,
    /// Federated bundles.
    pub federation: Vec<(String, PathBuf)>,
}

impl IdentityFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [&self.cert, &self.key, &self.bundle]
            .into_iter()
            .chain(self.federation.iter().map(|(_, p)| p))
            .map(PathBuf::as_path)
    }

    /// The files' bytes as they are now.
    fn read(&self) -> Contents<'_> {
        Contents::read(&self.cert, &self.key, &self.bundle, &self.federation)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// `idgate_policy_reloads_total{result}` and `idgate_identity_reloads_total{result}`.
#[derive(Clone)]
pub struct ReloadMetrics {
    policy: Family<ResultLabels, Counter>,
    identity: Family<ResultLabels, Counter>,
}

impl ReloadMetrics {
    /// Registers the reload counters.
    pub fn register(registry: &mut Registry) -> Self {
        let policy = Family::default();
        registry.register(
            "idgate_policy_reloads",
            "Policy file reloads by result",
            policy.clone(),
        );
        let identity = Family::default();
        registry.register(
            "idgate_identity_reloads",
            "files identity reloads by result",
            identity.clone(),
        );
        Self { policy, identity }
    }

    fn count(family: &Family<ResultLabels, Counter>, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        family.get_or_create(&ResultLabels { result }).inc();
    }
}

/// Everything that is reloaded, what it was built from last time, and the watches.
pub struct Reloader {
    policies: Vec<PolicySlot>,
    identity: Option<IdentityFiles>,
    /// What was refused last, so an unchanged bad file is reported once, not again at
    /// every reload another file's change or a SIGHUP starts.
    refused: Refused,
    /// Policies put in force whose predecessor requests still hold: its hits count as
    /// theirs until it is folded in and freed ([`Policy::settle_stats`]).
    unsettled: Vec<Arc<Policy>>,
    metrics: ReloadMetrics,
    changes: mpsc::UnboundedReceiver<()>,
    watcher: Option<RecommendedWatcher>,
    hangup: Option<Signal>,
}

impl Reloader {
    /// Starts watching the files' directories and SIGHUP at once (so a change made right
    /// after start-up is not missed); [`Reloader::run`] acts on them. Files that changed
    /// since they were loaded (before the watch began) are reloaded at once.
    pub fn new(
        policies: Vec<PolicySlot>,
        identity: Option<IdentityFiles>,
        metrics: ReloadMetrics,
    ) -> Self {
        let (tx, changes) = mpsc::unbounded_channel();
        let paths = policies
            .iter()
            .map(|slot| slot.path.as_path())
            .chain(identity.iter().flat_map(IdentityFiles::paths));
        let watcher = watch_dirs(&paths.collect::<Vec<_>>(), tx.clone())
            .inspect_err(|error| tracing::warn!(%error, "cannot watch files for changes; reload with SIGHUP"))
            .ok();
        let identity_changed = identity
            .as_ref()
            .is_some_and(|files| files.read().fingerprint() != files.in_force);
        if identity_changed || policies.iter().any(PolicySlot::changed_on_disk) {
            let _ = tx.send(());
        }
        let hangup = signal(SignalKind::hangup())
            .inspect_err(|error| tracing::warn!(%error, "cannot watch SIGHUP"))
            .ok();
        Self {
            refused: Refused {
                policies: vec![None; policies.len()],
                identity: None,
            },
            policies,
            identity,
            metrics,
            unsettled: Vec::new(),
            changes,
            watcher,
            hangup,
        }
    }

    /// Reloads on each file change or SIGHUP until shutdown.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let _watching = self.watcher.take();
        let mut hangup = self.hangup.take();
        let mut settling = tokio::time::interval(SETTLE_EVERY);
        settling.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = settling.tick(), if !self.unsettled.is_empty() => {
                    self.unsettled.retain(|policy| !policy.settle_stats());
                    continue;
                }
                Some(()) = self.changes.recv() => {
                    settle(&mut self.changes).await;
                    tracing::info!("files changed: reloading policy and identity files");
                }
                Some(()) = async { hangup.as_mut()?.recv().await } => {
                    tracing::info!("SIGHUP: reloading policy and identity files");
                }
            }
            // Off the runtime: its thread also serves requests, and parsing and compiling
            // a big policy takes a while (about 75 ms for 10,000 rules).
            self = match tokio::task::spawn_blocking(move || {
                self.reload();
                self
            })
            .await
            {
                Ok(reloader) => reloader,
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(_) => return,
            };
        }
    }

    /// Reloads whatever changed on disk since the last successful load.
    pub fn reload(&mut self) {
        for (slot, refused) in self.policies.iter().zip(&mut self.refused.policies) {
            if let Some(swapped_in) = reload_policy(slot, refused, &self.metrics) {
                if !swapped_in.settle_stats() {
                    self.unsettled.push(swapped_in);
                }
            }
        }
        if let Some(files) = &mut self.identity {
            reload_identity(files, &mut self.refused.identity, &self.metrics);
        }
    }
}

/// The content of the files last refused.
struct Refused {
    /// Per policy slot: the version (content hash) of the file refused.
    policies: Vec<Option<String>>,
    /// The identity files refused for good (an SVID not valid *yet* is not remembered:
    /// the same files become acceptable with time).
    identity: Option<Fingerprint>,
}

/// Waits until `changes` has been quiet for [`QUIET`], or [`MAX_WAIT`] has passed since
/// the event that woke the reloader, whichever comes first.
async fn settle(changes: &mut mpsc::UnboundedReceiver<()>) {
    let deadline = Instant::now() + MAX_WAIT;
    loop {
        let quiet = (Instant::now() + QUIET).min(deadline);
        tokio::select! {
            () = tokio::time::sleep_until(quiet) => return,
            event = changes.recv() => if event.is_none() || Instant::now() >= deadline {
                return;
            },
        }
    }
}

/// Watches the parent directory of each path (not the files: editors and Kubernetes
/// replace them), sending one message per change that concerns one of the files: an
/// event naming the file itself or a Kubernetes `..data`-style entry. Other files in the
/// same directory (a decision log, say) never cause a reload.
fn watch_dirs(
    paths: &[&Path],
    tx: mpsc::UnboundedSender<()>,
) -> notify::Result<RecommendedWatcher> {
    let names: HashSet<OsString> = paths
        .iter()
        .filter_map(|p| p.file_name().map(OsStr::to_os_string))
        .collect();
    let concerns_us = move |path: &PathBuf| {
        path.file_name()
            .is_some_and(|name| names.contains(name) || name.as_encoded_bytes().starts_with(b".."))
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access() && e.paths.iter().any(&concerns_us)) {
            let _ = tx.send(());
        }
    })?;
    let dirs: BTreeSet<PathBuf> = paths
        .iter()
        .map(|p| match p.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect();
    for dir in dirs {
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

/// Loads a policy file whose content differs from the policy in force and from the
/// content refused last, and swaps it in unless it is refused; the policy swapped in.
fn reload_policy(
    slot: &PolicySlot,
    refused: &mut Option<String>,
    metrics: &ReloadMetrics,
) -> Option<Arc<Policy>> {
    let source = SourceFile::read(&slot.path);
    let content = source.as_ref().ok().map(|s| Policy::version_of(&s.text));
    if let Some(content) = &content {
        if content == slot.policy.load().version() {
            // Back to what is in force: a bad edit made again is reported again.
            *refused = None;
            return None;
        }
        if refused.as_ref() == Some(content) {
            return None;
        }
    }
    let loaded = source
        .and_then(|source| Policy::from_file(&source))
        .and_then(|policy| {
            if slot.tcp_only {
                policy.check_tcp_only()?;
            }
            Ok(policy)
        });
    *refused = loaded.is_err().then_some(content).flatten();
    match loaded {
        Ok(policy) => {
            let old = slot.policy.load().version().to_string();
            tracing::info!(listener = %slot.listener, old_version = %old, new_version = %policy.version(), "policy reloaded");
            let new = Arc::new(policy);
            new.inherit_stats(&slot.policy.load());
            slot.policy.swap(new.clone());
            ReloadMetrics::count(&metrics.policy, true);
            Some(new)
        }
        Err(error) => {
            tracing::error!(listener = %slot.listener, "policy reload refused, keeping version {}: {error}", slot.policy.load().version());
            ReloadMetrics::count(&metrics.policy, false);
            None
        }
    }
}

/// Loads the identity files when they differ from the bytes in force, and publishes
/// them unless [`identity::files::check_replacement`] refuses the new SVID (expired, or
/// not valid yet while the one in use still is).
fn reload_identity(
    files: &mut IdentityFiles,
    refused: &mut Option<Fingerprint>,
    metrics: &ReloadMetrics,
) {
    let contents = files.read();
    let on_disk = contents.fingerprint();
    if on_disk == files.in_force {
        *refused = None;
        return;
    }
    if refused.as_ref() == Some(&on_disk) {
        return;
    }
    let current = files.handle.current();
    let loaded = contents.load().and_then(|loaded| {
        let now = identity::unix_seconds(std::time::SystemTime::now());
        let svid = current.as_ref().map(|m| &m.svid);
        identity::files::check_replacement(&files.cert, &loaded.svid, svid, now)?;
        Ok(loaded)
    });
    match loaded {
        Ok(loaded) => {
            tracing::info!(spiffe_id = %loaded.svid.spiffe_id, serial = %loaded.svid.serial, "identity files reloaded");
            files.handle.publish(loaded.svid, loaded.bundles);
            files.in_force = loaded.fingerprint;
            *refused = None;
            ReloadMetrics::count(&metrics.identity, true);
        }
        Err(error) => {
            *refused = (!error.is_not_yet_valid()).then_some(on_disk);
            let serial = current.as_ref().map(|m| m.svid.serial.clone());
            tracing::error!(serial = ?serial, "identity reload refused, keeping the SVID in use: {error}");
            ReloadMetrics::count(&metrics.identity, false);
        }
    }
}

#[cfg(test)]
mod tests;
