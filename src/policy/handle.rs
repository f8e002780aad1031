//! The policy in force for one listener: one atomic load per request, and a signal when
//! a reload swaps it, so long-lived connections can be judged again.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use tokio::sync::watch;

use super::Policy;

/// A swappable policy plus a change signal; cheap to clone.
#[derive(Clone)]
pub struct PolicyHandle {
    current: Arc<ArcSwap<Policy>>,
    changed: watch::Sender<()>,
}

impl PolicyHandle {
    /// A handle holding `policy`.
    pub fn new(policy: Arc<Policy>) -> Self {
        Self {
            current: Arc::new(ArcSwap::new(policy)),
            changed: watch::channel(()).0,
        }
    }

    /// The policy in force now (lock-free).
    pub fn load(&self) -> Guard<Arc<Policy>> {
        self.current.load()
    }

    /// Puts `policy` in force for every later decision, wakes subscribers, returns the old one.
    pub fn swap(&self, policy: Arc<Policy>) -> Arc<Policy> {
        let previous = self.current.swap(policy);
        self.changed.send_replace(());
        previous
    }

    /// A receiver that wakes after each swap.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// The underlying slot, for readers that only load (statistics).
    pub fn slot(&self) -> Arc<ArcSwap<Policy>> {
        self.current.clone()
    }
}
