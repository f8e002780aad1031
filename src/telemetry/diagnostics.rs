//! What the diagnostics (tracing) writer lost: lines its lossy, non-blocking stderr writer
//! dropped because stderr stopped draining, exported as `idgate_log_lines_dropped_total`.
//!
//! The writer is process-wide (set up once by `main`), so its drop count is too; this
//! module only reads it at scrape time and never writes a diagnostic itself.

use std::sync::OnceLock;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use tracing_appender::non_blocking::ErrorCounter;

/// The drop count of the process's diagnostics writer, once `main` has made one.
static WRITER_DROPS: OnceLock<ErrorCounter> = OnceLock::new();

/// Counts, from now on, the lines `dropped` says the process's diagnostics writer dropped
/// (the first writer given stays).
pub fn count_dropped(dropped: ErrorCounter) {
    let _ = WRITER_DROPS.set(dropped);
}

/// Registers `idgate_log_lines_dropped_total` (0 while no lossy writer is counted).
pub fn register(registry: &mut Registry) {
    registry.register(
        "idgate_log_lines_dropped",
        "Diagnostic (tracing) lines dropped because stderr did not drain",
        DroppedLines,
    );
}

/// Reads the writer's drop count when encoded.
#[derive(Debug)]
struct DroppedLines;

impl TypedMetric for DroppedLines {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for DroppedLines {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let dropped = WRITER_DROPS.get().map_or(0, ErrorCounter::dropped_lines);
        let dropped = u64::try_from(dropped).unwrap_or(u64::MAX);
        encoder.encode_counter::<NoLabelSet, _, u64>(&dropped, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}
