//! A Prometheus counter with one copy per worker, for counters every request increments.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

use crate::per_worker::PerWorker;

/// A counter whose workers increment their own copies; cheap to clone (clones share them).
#[derive(Clone, Debug, Default)]
pub struct WorkerCounter(Arc<PerWorker<AtomicU64>>);

impl WorkerCounter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.local().fetch_add(1, Ordering::Relaxed);
    }

    /// The total over all workers.
    pub fn get(&self) -> u64 {
        self.0.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for WorkerCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for WorkerCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::registry::Registry;

    use super::*;

    fn text(register: impl FnOnce(&mut Registry)) -> String {
        let mut registry = Registry::default();
        register(&mut registry);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        out
    }

    /// Counts made on several workers add up, and encode as prometheus-client's counter.
    #[test]
    fn encodes_the_total_like_prometheus_client() {
        let ours = WorkerCounter::default();
        std::thread::scope(|scope| {
            for worker in 0..3 {
                let ours = &ours;
                scope.spawn(move || {
                    crate::per_worker::enter(worker);
                    (0..=worker).for_each(|_| ours.inc());
                });
            }
        });
        let theirs = Counter::<u64>::default();
        theirs.inc_by(6);
        assert_eq!(ours.get(), 6);
        assert_eq!(
            text(|r| r.register("requests", "h", ours)),
            text(|r| r.register("requests", "h", theirs))
        );
    }
}
