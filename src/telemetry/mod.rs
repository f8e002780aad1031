//! What idgate tells operators: the decision log and request metrics.
//!
//! The proxy records here; the admin endpoint only encodes the registry. This room
//! never decides anything about a request.

mod counter;
/// A decision as one JSON line: public for the micro-benchmarks in `benches/`.
pub mod decision_line;
pub mod decisions;
pub mod diagnostics;
mod histogram;
pub mod requests;
mod sink;

pub use decisions::{DecisionLog, DecisionRecord};
pub use requests::RequestMetrics;
