//! Identity metrics: SVID expiry and rotations, kept current by watching the handle.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::IdentityHandle;

/// `idgate_svid_expiry_timestamp_seconds` and `idgate_svid_rotations_total`.
#[derive(Clone)]
pub struct IdentityMetrics {
    expiry: Gauge,
    rotations: Counter,
}

impl IdentityMetrics {
    /// Registers the identity metrics (both exist from start).
    pub fn register(registry: &mut Registry) -> Self {
        let expiry = Gauge::default();
        registry.register(
            "idgate_svid_expiry_timestamp_seconds",
            "notAfter of the SVID in use, seconds since the Unix epoch",
            expiry.clone(),
        );
        let rotations = Counter::default();
        registry.register(
            "idgate_svid_rotations",
            "Times a new SVID replaced the one in use",
            rotations.clone(),
        );
        Self { expiry, rotations }
    }

    /// Follows the handle until it is dropped: sets the expiry, counts serial changes.
    pub async fn follow(self, identity: IdentityHandle) {
        let mut updates = identity.subscribe();
        let mut serial: Option<String> = None;
        loop {
            if let Some(material) = identity.current() {
                self.expiry.set(material.svid.not_after);
                if serial.as_ref().is_some_and(|s| *s != material.svid.serial) {
                    self.rotations.inc();
                    tracing::info!(
                        spiffe_id = %material.svid.spiffe_id,
                        serial = %material.svid.serial,
                        "SVID rotated"
                    );
                }
                serial = Some(material.svid.serial.clone());
            }
            if updates.changed().await.is_err() {
                return;
            }
        }
    }
}
