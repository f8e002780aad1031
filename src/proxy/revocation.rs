//! Revocation of long-lived connections: a future that completes once the policy in force
//! no longer allows what a connection (a TCP relay, an HTTP connection, a tunnel) was let
//! in for.
//!
//! It judges again after each reload and at each rule `expires` still ahead (break-glass),
//! and sleeps in between: a policy with no expiry ahead costs no timer. It never ends a
//! connection itself; its owner does, and logs the reason it returns.

use std::time::{Instant, SystemTime};

use tokio::sync::watch;

use super::serve::Revoked;
use crate::policy::{Policy, PolicyHandle};

/// What woke a watcher.
enum Change {
    /// A reload put another policy in force.
    Reload,
    /// A rule's `expires` passed.
    Expiry,
}

/// A future that completes, with the reason, once the policy in force no longer lets
/// `still_allowed` pass: after a reload, or once a rule expires. Only what changes after
/// `judged_at` counts, which must be no later than the judgement that let the connection
/// in (so no expiry slips between that judgement and this watch): the policy in force
/// then is not judged again until a reload or an expiry.
pub fn revocation(
    policy: PolicyHandle,
    judged_at: SystemTime,
    still_allowed: impl Fn(&Policy) -> bool + Send + 'static,
) -> Revoked {
    Box::pin(async move {
        let mut reloads = policy.subscribe();
        let mut judged_at = judged_at;
        loop {
            let expiry = policy.load().next_expiry(judged_at).and_then(instant_of);
            let change = match expiry {
                // No expiry ahead: no timer, only the reload signal (as long as one can come).
                None => match reloads.changed().await {
                    Ok(()) => Change::Reload,
                    Err(_) => std::future::pending().await,
                },
                // Boxed: only the watchers with an expiry ahead carry a timer's state.
                Some(at) => Box::pin(reload_or(&mut reloads, at)).await,
            };
            // Read before judging, so the judgement sees every expiry up to `now`.
            let now = SystemTime::now();
            let current = policy.load();
            if !still_allowed(&current) {
                let version = current.version();
                let expired = match change {
                    Change::Reload => None,
                    Change::Expiry => current.expired_between(judged_at, now),
                };
                return match expired {
                    Some(expired) => {
                        format!("revoked: {expired}; policy version {version} no longer allows it")
                    }
                    None => format!("revoked: policy version {version} no longer allows it"),
                };
            }
            judged_at = now;
        }
    })
}

/// The next reload, or `at`, whichever comes first.
async fn reload_or(reloads: &mut watch::Receiver<()>, at: Instant) -> Change {
    tokio::select! {
        Ok(()) = reloads.changed() => Change::Reload,
        () = tokio::time::sleep_until(at.into()) => Change::Expiry,
    }
}

/// The `Instant` at which the wall clock should read `at` (now, if it already does);
/// `None` past what an `Instant` holds. Should the clock be set back meanwhile, the
/// watcher wakes early, finds the rule still live and sleeps again until the new reading.
fn instant_of(at: SystemTime) -> Option<Instant> {
    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
    Instant::now().checked_add(left)
}
