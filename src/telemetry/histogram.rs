//! A Prometheus histogram that observes without a lock.
//!
//! prometheus-client's `Histogram` takes a write lock on every observation, which every
//! request of every worker thread would contend on. This one keeps one atomic counter per
//! bucket and encodes exactly like prometheus-client's (same buckets, `+Inf` last). It
//! never allocates after construction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// A histogram of seconds; cheap to clone (clones share the counts).
#[derive(Clone, Debug)]
pub struct AtomicHistogram(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// Upper bounds, ascending, the last one `f64::MAX` (`+Inf`).
    bounds: Box<[f64]>,
    counts: Box<[AtomicU64]>,
    /// Sum of observations in nanoseconds (whole nanoseconds are plenty for latencies).
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    /// A histogram with these upper bounds (ascending) plus `+Inf`.
    pub fn new(buckets: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Box<[f64]> = buckets.into_iter().chain([f64::MAX]).collect();
        let counts = bounds.iter().map(|_| AtomicU64::new(0)).collect();
        Self(Arc::new(Inner {
            bounds,
            counts,
            sum_nanos: AtomicU64::new(0),
        }))
    }

    /// Records one observation, in seconds.
    pub fn observe(&self, seconds: f64) {
        let inner = &*self.0;
        let last = inner.counts.len() - 1;
        let i = inner
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(last);
        inner.counts[i].fetch_add(1, Ordering::Relaxed);
        // `as` saturates: negative or NaN becomes 0, huge values u64::MAX.
        let nanos = (seconds * 1e9) as u64;
        inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// (sum in seconds, count, per-bucket counts); the count is the buckets' total, so a
    /// scrape always sees `_count` equal to the `+Inf` bucket.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let inner = &*self.0;
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .zip(inner.counts.iter())
            .map(|(bound, count)| (*bound, count.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, count, buckets)
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
    use prometheus_client::registry::Registry;

    use super::*;

    /// Encodes exactly as prometheus-client's own histogram does for the same observations.
    #[test]
    fn encodes_like_prometheus_client() {
        let ours = AtomicHistogram::new(exponential_buckets(0.0001, 2.0, 18));
        let theirs = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        for v in [0.00005, 0.0001, 0.00015, 0.003, 0.25, 2.0, 100.0] {
            ours.observe(v);
            theirs.observe(v);
        }
        let text = |metric: Box<dyn Fn(&mut Registry)>| {
            let mut registry = Registry::default();
            metric(&mut registry);
            let mut out = String::new();
            encode(&mut out, &registry).unwrap();
            out
        };
        let a = text(Box::new(move |r| {
            r.register("d_seconds", "h", ours.clone())
        }));
        let b = text(Box::new(move |r| {
            r.register("d_seconds", "h", theirs.clone())
        }));
        assert_eq!(a, b);
        assert!(a.contains("d_seconds_count 7"), "{a}");
        assert!(a.contains("le=\"+Inf\"} 7"), "{a}");
    }
}
