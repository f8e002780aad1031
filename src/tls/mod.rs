//! mTLS with SPIFFE identities: rustls configs, SPIFFE verifiers, the peer's identity.
//!
//! Every config reads the current [`IdentityHandle`] at handshake time, so a rotation
//! reaches the next handshake without rebuilding anything. This room never parses HTTP
//! or decides what a peer may do; it only says who the peer is.

use std::io;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::CertificateDer;

use crate::identity::IdentityHandle;
use crate::spiffe_id::SpiffeId;

/// The one crypto provider idgate uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Who the peer of an established connection is.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    /// The peer's SPIFFE ID (verified during the handshake).
    pub spiffe_id: SpiffeId,
    /// Lowercase hex SHA-256 of the peer leaf's DER (for XFCC `Hash=`).
    pub leaf_sha256: String,
    /// Peer leaf notAfter, seconds since the Unix epoch.
    pub not_after: i64,
}

impl PeerIdentity {
    /// Reads the identity of an already verified peer from its certificate chain.
    pub fn from_certs(_certs: &[CertificateDer<'_>]) -> Option<Self> {
        todo!("helper B")
    }
}

/// Server config for inbound listeners: TLS 1.2/1.3, client cert required, ALPN h2 and http/1.1.
pub fn server_config(_identity: IdentityHandle, _alpn: &[&[u8]]) -> Arc<ServerConfig> {
    todo!("helper B")
}

/// Client config for outbound listeners: presents our SVID and accepts only `server_ids`.
pub fn client_config(
    _identity: IdentityHandle,
    _server_ids: Vec<SpiffeId>,
    _alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    todo!("helper B")
}

/// Handshake failure counting and logging, `idgate_tls_handshake_failures_total{listener,reason}`.
#[derive(Clone)]
pub struct TlsMetrics {}

impl TlsMetrics {
    /// Registers the TLS metrics.
    pub fn register(_registry: &mut Registry) -> Self {
        todo!("helper B")
    }

    /// Logs a failed handshake with its reason and counts it; returns the reason label.
    pub fn handshake_failed(
        &self,
        _listener: &str,
        _peer: std::net::SocketAddr,
        _error: &io::Error,
    ) -> &'static str {
        todo!("helper B")
    }
}
