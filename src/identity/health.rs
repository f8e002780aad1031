//! Identity health: is the SVID in use still fit to serve, and is the bundle fresh?
//!
//! `/readyz` asks [`IdentityHealth::reasons`]; the SPIRE source tells it when the agent last
//! delivered material, whether the stream is up and whether the agent still issues the
//! configured `spiffe_id`. It owns the Workload API metrics
//! (`idgate_workload_api_connected`, `idgate_bundle_age_seconds`,
//! `idgate_identity_last_update_timestamp_seconds`). It never changes the material itself.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::{IdentityHandle, Material};

/// Default for `[identity] expiry_margin` (spire).
pub const DEFAULT_EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// Default for `[identity] max_bundle_age` (spire).
pub const DEFAULT_MAX_BUNDLE_AGE: Duration = Duration::from_secs(24 * 3600);

/// When the identity stops being fit to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSettings {
    /// Not ready once the SVID is this close to its notAfter with no replacement.
    pub expiry_margin: Duration,
    /// Not ready once the source last delivered the bundle longer ago than this
    /// (`None`: files, whose bundle is what is on disk).
    pub max_bundle_age: Option<Duration>,
}

impl HealthSettings {
    /// The files source: only an expired SVID makes the process not ready.
    pub fn files() -> Self {
        Self {
            expiry_margin: Duration::ZERO,
            max_bundle_age: None,
        }
    }
}

/// Shared identity health; cheap to clone.
#[derive(Clone, Debug)]
pub struct IdentityHealth {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: HealthSettings,
    /// When the source last delivered a valid bundle, seconds since the epoch (0: never).
    confirmed_at: AtomicI64,
    connected: Gauge,
    last_update: Gauge,
    /// Set while the agent streams SVIDs but none with the configured `spiffe_id`.
    not_issued: Mutex<Option<Problem>>,
    /// The reasons last logged, so changes are logged once.
    logged: Mutex<Vec<std::mem::Discriminant<Problem>>>,
}

impl IdentityHealth {
    /// Health with `settings`; no metrics registered.
    pub fn new(settings: HealthSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                confirmed_at: AtomicI64::new(0),
                connected: Gauge::default(),
                last_update: Gauge::default(),
                not_issued: Mutex::new(None),
                logged: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Registers the Workload API metrics (all exist from start).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "idgate_workload_api_connected",
            "1 while the Workload API stream to the agent is up, else 0",
            self.inner.connected.clone(),
        );
        registry.register(
            "idgate_identity_last_update_timestamp_seconds",
            "When the identity source last delivered valid material, seconds since the Unix epoch",
            self.inner.last_update.clone(),
        );
        registry.register(
            "idgate_bundle_age_seconds",
            "Seconds since the identity source last delivered the trust bundle (0 before the first)",
            BundleAge(self.clone()),
        );
    }

    /// Records whether the Workload API stream is up.
    pub fn set_connected(&self, connected: bool) {
        self.inner.connected.set(i64::from(connected));
    }

    /// Records that the source delivered valid material (and bundle) at `at`.
    pub fn confirmed(&self, at: SystemTime) {
        let secs = unix_seconds(at);
        self.inner.confirmed_at.store(secs, Ordering::Relaxed);
        self.inner.last_update.set(secs);
    }

    /// Records that the agent's latest update holds no SVID with the configured `spiffe_id`
    /// (`wanted`), only `offered`: not ready until [`IdentityHealth::issued`].
    pub fn not_issued(&self, wanted: &str, offered: &[String]) {
        let offered = match offered.is_empty() {
            true => "none".to_string(),
            false => offered.join(", "),
        };
        *lock(&self.inner.not_issued) = Some(Problem::NotIssued {
            wanted: wanted.to_string(),
            offered,
        });
    }

    /// Records that the agent issues the configured `spiffe_id` (again).
    pub fn issued(&self) {
        *lock(&self.inner.not_issued) = None;
    }

    /// Seconds since the bundle was last delivered, `None` before the first delivery.
    pub fn bundle_age(&self, now: SystemTime) -> Option<Duration> {
        match self.inner.confirmed_at.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_secs(
                u64::try_from(unix_seconds(now) - at).unwrap_or(0),
            )),
        }
    }

    /// Why the identity in use is not fit to serve now; empty when it is. With no identity
    /// yet, only a configured `spiffe_id` the agent does not issue is reported here:
    /// `/readyz` reports the wait itself.
    pub fn reasons(&self, identity: &IdentityHandle) -> Vec<String> {
        self.reasons_at(identity.current().as_deref(), SystemTime::now())
    }

    fn reasons_at(&self, material: Option<&Material>, now: SystemTime) -> Vec<String> {
        self.problems_at(material, now)
            .iter()
            .map(Problem::to_string)
            .collect()
    }

    fn problems_at(&self, material: Option<&Material>, now: SystemTime) -> Vec<Problem> {
        let mut problems: Vec<Problem> = lock(&self.inner.not_issued).iter().cloned().collect();
        if let Some(material) = material {
            problems.extend(self.material_problems(material, now));
        }
        problems
    }

    fn material_problems(&self, material: &Material, now: SystemTime) -> Vec<Problem> {
        let settings = &self.inner.settings;
        let mut problems = Vec::new();
        let now_secs = unix_seconds(now);
        let not_after = material.svid.not_after;
        let id = material.svid.spiffe_id.to_string();
        let margin = i64::try_from(settings.expiry_margin.as_secs()).unwrap_or(i64::MAX);
        if now_secs >= not_after {
            problems.push(Problem::Expired {
                id,
                ago: now_secs - not_after,
            });
        } else if now_secs >= not_after.saturating_sub(margin) {
            problems.push(Problem::Expiring {
                id,
                left: not_after - now_secs,
                margin,
            });
        }
        if let (Some(max), Some(age)) = (settings.max_bundle_age, self.bundle_age(now)) {
            if age > max {
                problems.push(Problem::StaleBundle {
                    age: age.as_secs(),
                    max: max.as_secs(),
                });
            }
        }
        problems
    }

    /// Checks once a second until `shutdown` and logs each change of health, so an operator
    /// sees in the log why `/readyz` turned 503 (and when it recovered).
    pub async fn watch(self, identity: IdentityHandle, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let problems = self.problems_at(identity.current().as_deref(), SystemTime::now());
            let mut logged = lock(&self.inner.logged);
            let kinds: Vec<_> = problems.iter().map(std::mem::discriminant).collect();
            if kinds == *logged {
                continue;
            }
            match problems.is_empty() {
                true => tracing::info!("identity healthy again"),
                false => {
                    let reasons: Vec<String> = problems.iter().map(Problem::to_string).collect();
                    tracing::warn!(reasons = %reasons.join("; "), "identity not fit to serve: not ready");
                }
            }
            *logged = kinds;
        }
    }
}

/// One reason the identity in use is not fit to serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Problem {
    #[error(
        "the agent does not issue the configured spiffe_id {wanted} to this workload (it offers: \
         {offered}); check its registration entries"
    )]
    NotIssued { wanted: String, offered: String },
    #[error("SVID {id} expired {ago}s ago and no replacement has arrived")]
    Expired { id: String, ago: i64 },
    #[error(
        "SVID {id} expires in {left}s (expiry_margin {margin}s) and no replacement has arrived"
    )]
    Expiring { id: String, left: i64, margin: i64 },
    #[error("trust bundle last delivered {age}s ago (max_bundle_age {max}s)")]
    StaleBundle { age: u64, max: u64 },
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `at` as whole seconds since the Unix epoch (negative before it), as certificates count.
pub fn unix_seconds(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// `idgate_bundle_age_seconds`, computed when scraped.
#[derive(Debug)]
struct BundleAge(IdentityHealth);

impl EncodeMetric for BundleAge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let age = self.0.bundle_age(SystemTime::now()).unwrap_or_default();
        encoder.encode_gauge(&age.as_secs_f64())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Svid, TrustBundles};

    fn material(not_after_from_now: i64) -> (Arc<Material>, SystemTime) {
        let ca = crate::devpki::DevCa::new("example.org").expect("CA");
        let id = crate::spiffe_id::SpiffeId::parse("spiffe://example.org/w").expect("ID");
        let cert = ca.issue(&crate::devpki::LeafSpec::svid(&id)).expect("leaf");
        let svid = Svid::from_der(cert.chain_der.clone(), cert.key_der.clone_key()).expect("SVID");
        let now = UNIX_EPOCH
            + Duration::from_secs(
                u64::try_from(svid.not_after - not_after_from_now).expect("time"),
            );
        let handle = IdentityHandle::new("test");
        (handle.publish(svid, TrustBundles::default()), now)
    }

    #[test]
    fn expiry_and_margin() {
        let health = IdentityHealth::new(HealthSettings {
            expiry_margin: Duration::from_secs(30),
            max_bundle_age: None,
        });
        let (m, now) = material(60);
        assert!(health.reasons_at(Some(&*m), now).is_empty());
        let (m, now) = material(29);
        let reasons = health.reasons_at(Some(&*m), now);
        assert!(reasons[0].contains("expires in 29s"), "{reasons:?}");
        let (m, now) = material(-5);
        let reasons = health.reasons_at(Some(&*m), now);
        assert!(reasons[0].contains("expired 5s ago"), "{reasons:?}");
    }

    #[test]
    fn files_health_only_cares_about_expiry() {
        let health = IdentityHealth::new(HealthSettings::files());
        let (m, now) = material(1);
        assert!(health.reasons_at(Some(&*m), now).is_empty());
        let (m, now) = material(0);
        assert_eq!(health.reasons_at(Some(&*m), now).len(), 1);
    }

    #[test]
    fn stale_bundle() {
        let health = IdentityHealth::new(HealthSettings {
            expiry_margin: Duration::ZERO,
            max_bundle_age: Some(Duration::from_secs(3600)),
        });
        let (m, now) = material(10_000);
        assert!(
            health.reasons_at(Some(&*m), now).is_empty(),
            "never delivered: no age"
        );
        health.confirmed(now - Duration::from_secs(3600));
        assert!(health.reasons_at(Some(&*m), now).is_empty());
        health.confirmed(now - Duration::from_secs(3601));
        let reasons = health.reasons_at(Some(&*m), now);
        assert!(
            reasons[0].contains("last delivered 3601s ago"),
            "{reasons:?}"
        );
        assert_eq!(health.bundle_age(now), Some(Duration::from_secs(3601)));
    }

    #[test]
    fn configured_id_not_issued_until_it_is_again() {
        let health = IdentityHealth::new(HealthSettings::files());
        let (m, now) = material(10_000);
        let offered = ["spiffe://example.org/b".to_string()];
        health.not_issued("spiffe://example.org/w", &offered);
        for material in [Some(&*m), None] {
            let reasons = health.reasons_at(material, now);
            assert_eq!(reasons.len(), 1, "{reasons:?}");
            assert!(
                reasons[0]
                    .contains("does not issue the configured spiffe_id spiffe://example.org/w")
                    && reasons[0].contains("(it offers: spiffe://example.org/b)"),
                "{reasons:?}"
            );
        }
        health.not_issued("spiffe://example.org/w", &[]);
        assert!(health.reasons_at(None, now)[0].contains("(it offers: none)"));
        health.issued();
        assert!(health.reasons_at(Some(&*m), now).is_empty());
    }
}
