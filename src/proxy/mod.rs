//! The data path: inbound (mTLS in, policy, to the local app) and outbound (plain in, mTLS to a peer).
//!
//! accept -> TLS handshake -> peer SPIFFE ID -> HTTP request -> policy decision -> upstream.
//! This room owns sockets and HTTP; it asks `tls` who the peer is and `policy` what
//! the peer may do, and never decides either itself.

mod coalesce;
mod copy;
mod forward;
/// Header rules (hop-by-hop removal, XFCC, HTTP/2 readiness): pure functions, public for
/// the micro-benchmarks in `benches/`.
pub mod headers;
mod http_server;
mod in_flight;
mod inbound;
mod outbound;
mod pool;
/// Request IDs (kept or made, and copied beside the request): public for the
/// micro-benchmarks in `benches/`.
pub mod request_id;
mod respond;
mod revocation;
mod serve;
mod stall;
mod stream;
mod tcp;
mod tunnel;
mod workers;

pub use inbound::InboundListener;
pub use outbound::OutboundListener;
pub use workers::Workers;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::identity::IdentityHandle;
use crate::telemetry::{DecisionLog, RequestMetrics};
use crate::tls::TlsMetrics;

/// The largest HTTP/2 frame idgate accepts (SETTINGS_MAX_FRAME_SIZE; the protocol's
/// default is 16 KiB). A peer sidecar then sends a large body in 64 KiB DATA frames: four
/// full TLS records in one write, a quarter of the frames, writes and frame headers. Larger
/// frames measured no better.
const HTTP2_MAX_FRAME: u32 = 64 * 1024;

/// What every listener shares: identity, telemetry, and the shutdown signal.
#[derive(Clone)]
pub struct Shared {
    /// Our identity and trust bundles.
    pub identity: IdentityHandle,
    /// Decision log.
    pub decisions: DecisionLog,
    /// Request metrics.
    pub requests: RequestMetrics,
    /// Handshake failure metrics.
    pub tls: TlsMetrics,
    /// Cancelled when the process starts draining.
    pub shutdown: CancellationToken,
    /// Every connection task, so the drain can wait for them.
    pub tasks: TaskTracker,
    /// The threads that serve connections.
    pub workers: Arc<Workers>,
}

impl Shared {
    /// Our SPIFFE ID now (empty before the first SVID: no handshake succeeds then anyway).
    pub fn own_id(&self) -> String {
        self.identity
            .current()
            .map(|m| m.svid.spiffe_id.to_string())
            .unwrap_or_default()
    }
}
