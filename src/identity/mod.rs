//! Workload identity: the SVID in use now and the trust bundles, behind one handle.
//!
//! Sources (`files`, `spire`) build a [`Material`] and call [`IdentityHandle::publish`];
//! handshakes read the latest one with a lock-free load. Live connections keep the
//! material they shook hands with. This room never opens sockets or judges requests.

pub mod files;
mod health;
mod material;
mod metrics;
pub mod spire;

pub use health::{
    unix_seconds, HealthSettings, IdentityHealth, DEFAULT_EXPIRY_MARGIN, DEFAULT_MAX_BUNDLE_AGE,
};
pub use metrics::IdentityMetrics;

pub use material::{IdentityError, Material, Svid, TrustBundles, NOT_BEFORE_SKEW};

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tokio::sync::watch;

/// The identity shared by every listener: cheap to clone, lock-free to read.
#[derive(Clone)]
pub struct IdentityHandle {
    inner: Arc<Inner>,
}

struct Inner {
    current: ArcSwapOption<Material>,
    generation: watch::Sender<u64>,
    source: String,
}

impl IdentityHandle {
    /// A handle with no identity yet; `source` describes where it will come from
    /// (shown by `/readyz` while waiting, e.g. `files certs-dev/api.pem`).
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                current: ArcSwapOption::empty(),
                generation: watch::channel(0).0,
                source: source.into(),
            }),
        }
    }

    /// The material in use now, `None` before the first SVID arrived.
    pub fn current(&self) -> Option<Arc<Material>> {
        self.inner.current.load_full()
    }

    /// Swaps in new material for every later handshake and wakes subscribers.
    pub fn publish(&self, svid: Svid, bundles: TrustBundles) -> Arc<Material> {
        let mut published = None;
        self.inner.generation.send_modify(|generation| {
            *generation += 1;
            let material = Arc::new(Material::new(svid, bundles, *generation));
            self.inner.current.store(Some(material.clone()));
            published = Some(material);
        });
        published.expect("send_modify runs its closure")
    }

    /// A receiver that changes each time new material is published.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    /// Where the identity comes from, for readiness and logs.
    pub fn source(&self) -> &str {
        &self.inner.source
    }
}
