//! Readiness as a set of named conditions that startup tasks clear by dropping a guard.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What still keeps the process from being ready.
#[derive(Clone, Default)]
pub struct Readiness {
    pending: Arc<Mutex<BTreeMap<u64, String>>>,
    next: Arc<AtomicU64>,
}

/// Clears its condition when dropped.
pub struct ReadyGuard {
    pending: Arc<Mutex<BTreeMap<u64, String>>>,
    id: u64,
}

impl Readiness {
    /// Adds a condition, described for `/readyz`, that holds until the guard drops.
    pub fn pending(&self, reason: impl Into<String>) -> ReadyGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.pending).insert(id, reason.into());
        ReadyGuard {
            pending: self.pending.clone(),
            id,
        }
    }

    /// The conditions still pending, oldest first.
    pub fn reasons(&self) -> Vec<String> {
        lock(&self.pending).values().cloned().collect()
    }
}

impl Drop for ReadyGuard {
    fn drop(&mut self) {
        lock(&self.pending).remove(&self.id);
    }
}

fn lock(m: &Mutex<BTreeMap<u64, String>>) -> std::sync::MutexGuard<'_, BTreeMap<u64, String>> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_clear_their_condition() {
        let readiness = Readiness::default();
        let a = readiness.pending("binding api");
        let b = readiness.pending("waiting for SVID");
        assert_eq!(readiness.reasons(), ["binding api", "waiting for SVID"]);
        drop(a);
        assert_eq!(readiness.reasons(), ["waiting for SVID"]);
        drop(b);
        assert!(readiness.reasons().is_empty());
    }
}
