//! Per-request and per-connection metrics of the proxy listeners.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;
use std::sync::OnceLock;

use super::counter::WorkerCounter;
use super::histogram::AtomicHistogram;
use crate::policy::Verdict;

/// Labels of `idgate_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Listener name.
    pub listener: String,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// Client SPIFFE ID.
    pub source: String,
    /// `allow`, `deny` or `audit_deny`.
    pub decision: &'static str,
}

/// Labels keyed by listener only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// Listener name.
    pub listener: String,
}

/// Request counters, latency histogram and open connections.
#[derive(Clone)]
pub struct RequestMetrics {
    requests: Family<RequestLabels, WorkerCounter>,
    duration: AtomicHistogram,
    connections: Family<ListenerLabels, Gauge>,
    refused: Family<ListenerLabels, Counter>,
    cut: Counter,
}

impl RequestMetrics {
    /// Registers the request metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<RequestLabels, WorkerCounter>::default();
        registry.register("idgate_requests", "Requests by decision", requests.clone());
        let duration = AtomicHistogram::new(exponential_buckets(0.0001, 2.0, 18));
        registry.register(
            "idgate_request_duration_seconds",
            "Time from request to response headers",
            duration.clone(),
        );
        let connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "idgate_connections_active",
            "Open client connections",
            connections.clone(),
        );
        let refused = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "idgate_connections_refused",
            "Connections closed at once because the listener had max_connections open",
            refused.clone(),
        );
        let cut = Counter::default();
        registry.register(
            "idgate_requests_cut",
            "Requests closed under by their connection's end after a drain (shutdown, revocation, expiry)",
            cut.clone(),
        );
        Self {
            requests,
            duration,
            connections,
            refused,
            cut,
        }
    }

    /// The counters of one connection's source: looked up on first use, then only incremented.
    pub fn for_peer(&self, listener: &str, direction: &'static str, source: &str) -> PeerCounters {
        PeerCounters {
            family: self.requests.clone(),
            listener: listener.to_string(),
            direction,
            source: source.to_string(),
            counters: Default::default(),
            duration: self.duration.clone(),
        }
    }

    /// Counts a connection refused for being over the listener's limit.
    pub fn refused(&self, listener: &str) {
        let labels = ListenerLabels {
            listener: listener.to_string(),
        };
        self.refused.get_or_create(&labels).inc();
    }

    /// Counts a request closed under by its connection's end after a drain.
    pub fn cut(&self) {
        self.cut.inc();
    }

    /// Requests closed under by their connection's end so far.
    pub fn cut_so_far(&self) -> u64 {
        self.cut.get()
    }

    /// Marks a connection open until the returned guard drops.
    pub fn connection(&self, listener: &str) -> ConnectionGuard {
        let gauge = self
            .connections
            .get_or_create(&ListenerLabels {
                listener: listener.to_string(),
            })
            .clone();
        gauge.inc();
        ConnectionGuard(gauge)
    }
}

/// Request counters of one (listener, direction, source), by decision.
pub struct PeerCounters {
    family: Family<RequestLabels, WorkerCounter>,
    listener: String,
    direction: &'static str,
    source: String,
    counters: [OnceLock<WorkerCounter>; 3],
    duration: AtomicHistogram,
}

impl PeerCounters {
    /// Counts one finished request with its decision and duration.
    pub fn record(&self, verdict: Verdict, seconds: f64) {
        let slot = match verdict {
            Verdict::Allow => 0,
            Verdict::Deny => 1,
            Verdict::AuditDeny => 2,
        };
        self.counters[slot]
            .get_or_init(|| {
                let labels = RequestLabels {
                    listener: self.listener.clone(),
                    direction: self.direction,
                    source: self.source.clone(),
                    decision: verdict.as_str(),
                };
                self.family.get_or_create(&labels).clone()
            })
            .inc();
        self.duration.observe(seconds);
    }
}

/// Decrements `idgate_connections_active` when dropped.
pub struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
