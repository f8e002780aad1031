//! A Prometheus histogram that observes without a lock.
//!
//! prometheus-client's `Histogram` takes a write lock on every observation, which every
//! request of every worker thread would contend on. This one keeps one atomic counter per
//! bucket, per worker ([`PerWorker`]), and encodes exactly like prometheus-client's (same
//! buckets, `+Inf` last). It allocates only on a worker's first observation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

use crate::per_worker::PerWorker;

/// A histogram of seconds; cheap to clone (clones share the counts).
#[derive(Clone, Debug)]
pub struct AtomicHistogram(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// Upper bounds, ascending, the last one `f64::MAX` (`+Inf`).
    bounds: Box<[f64]>,
    counts: PerWorker<Counts>,
}

/// One worker's observations.
#[derive(Debug)]
struct Counts {
    /// One per bound.
    buckets: Box<[AtomicU64]>,
    /// Sum of observations in nanoseconds (whole nanoseconds are plenty for latencies).
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    /// A histogram with these upper bounds (ascending) plus `+Inf`.
    pub fn new(buckets: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Box<[f64]> = buckets.into_iter().chain([f64::MAX]).collect();
        Self(Arc::new(Inner {
            bounds,
            counts: PerWorker::default(),
        }))
    }

    /// Records one observation, in seconds.
    pub fn observe(&self, seconds: f64) {
        let inner = &*self.0;
        let last = inner.bounds.len() - 1;
        let i = inner
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(last);
        let counts = inner.counts.local_or_init(|| Counts {
            buckets: inner.bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        });
        counts.buckets[i].fetch_add(1, Ordering::Relaxed);
        // `as` saturates: negative or NaN becomes 0, huge values u64::MAX.
        let nanos = (seconds * 1e9) as u64;
        counts.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// (sum in seconds, count, per-bucket counts), over every worker; the count is the
    /// buckets' total, so a scrape always sees `_count` equal to the `+Inf` bucket.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let inner = &*self.0;
        let mut buckets: Vec<(f64, u64)> = inner.bounds.iter().map(|b| (*b, 0)).collect();
        let mut sum_nanos = 0u64;
        for counts in inner.counts.iter() {
            for (total, count) in buckets.iter_mut().zip(counts.buckets.iter()) {
                total.1 += count.load(Ordering::Relaxed);
            }
            sum_nanos = sum_nanos.saturating_add(counts.sum_nanos.load(Ordering::Relaxed));
        }
        let count = buckets.iter().map(|(_, n)| n).sum();
        (sum_nanos as f64 / 1e9, count, buckets)
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

    /// Encodes exactly as prometheus-client's own histogram does for the same observations,
    /// made on three workers.
    #[test]
    fn encodes_like_prometheus_client() {
        let ours = AtomicHistogram::new(exponential_buckets(0.0001, 2.0, 18));
        let theirs = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        let values = [0.00005, 0.0001, 0.00015, 0.003, 0.25, 2.0, 100.0];
        // One worker after the other: prometheus-client sums floats in observation order,
        // so the reference's `_sum` must see one order (ours adds whole nanoseconds).
        std::thread::scope(|scope| {
            for (worker, chunk) in values.chunks(3).enumerate() {
                let (ours, theirs) = (&ours, &theirs);
                scope
                    .spawn(move || {
                        crate::per_worker::enter(worker);
                        for v in chunk {
                            ours.observe(*v);
                            theirs.observe(*v);
                        }
                    })
                    .join()
                    .unwrap();
            }
        });
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
