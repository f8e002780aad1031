//! mTLS with SPIFFE identities: rustls configs, SPIFFE verifiers, the peer's identity.
//!
//! Every config reads the current [`IdentityHandle`] at handshake time, so a rotation
//! reaches the next handshake without rebuilding anything. This room never parses HTTP
//! or decides what a peer may do; it only says who the peer is.

mod client;
mod failure;
mod peer;
mod server;
mod verify;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, ServerConfig};

use crate::identity::IdentityHandle;
use crate::spiffe_id::SpiffeId;

pub use failure::{describe, failure_reason, TlsMetrics};
pub use peer::PeerIdentity;
pub use verify::{spiffe_id_of, PeerCertError};

/// The one crypto provider idgate uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server config for inbound listeners: TLS 1.2/1.3, client cert required and verified
/// against the bundle of the client's trust domain, our current SVID, ALPN from `alpn`
/// (e.g. `h2`, `http/1.1`). No session resumption.
pub fn server_config(identity: IdentityHandle, alpn: &[&[u8]]) -> Arc<ServerConfig> {
    server::build(identity, alpn)
}

/// Client config for outbound listeners: presents our SVID and accepts only `server_ids`
/// (DNS names are never checked). No session resumption.
pub fn client_config(
    identity: IdentityHandle,
    server_ids: Vec<SpiffeId>,
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    client::build(identity, server_ids, alpn, &[&TLS13, &TLS12])
}
