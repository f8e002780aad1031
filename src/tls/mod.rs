//! mTLS with SPIFFE identities: rustls configs, SPIFFE verifiers, the peer's identity.
//!
//! Every config reads the current [`IdentityHandle`] at handshake time, so a rotation
//! reaches the next handshake without rebuilding anything. This room never parses HTTP
//! or decides what a peer may do; it only says who the peer is.

mod client;
mod failure;
mod peer;
mod resumption;
mod server;
mod session_cache;
mod verified_chains;
mod verify;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use rustls::crypto::ring::cipher_suite;
use rustls::crypto::CryptoProvider;
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, ServerConfig, SupportedCipherSuite};

use crate::identity::IdentityHandle;
use crate::spiffe_id::SpiffeId;

pub use failure::{describe, failure_reason, DialFailures, TlsMetrics};
pub use peer::{PeerCheck, PeerIdentity};
pub use verify::{leaf_spiffe_id_of, spiffe_id_of, PeerCertError};

/// The one crypto provider idgate uses (ring), with the cipher suites in idgate's order of
/// preference: [`CIPHER_SUITES`].
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: CIPHER_SUITES.to_vec(),
        ..rustls::crypto::ring::default_provider()
    })
}

/// Every suite ring offers, AES-128-GCM with SHA-256 first in each TLS version (rustls's
/// default puts AES-256-GCM with SHA-384 first). Both are strong; the SHA-256 suite costs
/// less: the handshake's transcript hash and key schedule run on the CPU's SHA extensions
/// (ring has none for SHA-384) and AES-128 does 10 rounds per block where AES-256 does 14.
/// Inbound listeners choose by this order, not the client's, so the peer's preference
/// cannot pick the dearer suite; a client offering only AES-256 or ChaCha20 still connects.
pub const CIPHER_SUITES: &[SupportedCipherSuite] = &[
    cipher_suite::TLS13_AES_128_GCM_SHA256,
    cipher_suite::TLS13_AES_256_GCM_SHA384,
    cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// Server config for inbound listeners: TLS 1.2/1.3, client cert required and verified
/// against the bundle of the client's trust domain, our current SVID, ALPN from `alpn`
/// (e.g. `h2`, `http/1.1`), the cipher suite chosen by [`CIPHER_SUITES`]' order. With
/// `resumption`, clients may resume sessions through bounded tickets (see
/// [`PeerIdentity::of_connection`] and [`PeerCheck`] for the check every resumed
/// connection still passes).
pub fn server_config(
    identity: IdentityHandle,
    alpn: &[&[u8]],
    resumption: bool,
) -> Arc<ServerConfig> {
    server::build(identity, alpn, resumption)
}

/// Client config for outbound listeners: presents our SVID and accepts only `server_ids`
/// (DNS names are never checked). With `resumption`, sessions the server offers are kept
/// in a bounded cache and resumed.
pub fn client_config(
    identity: IdentityHandle,
    server_ids: Vec<SpiffeId>,
    alpn: &[&[u8]],
    resumption: bool,
) -> Arc<ClientConfig> {
    client::build(
        identity,
        server_ids,
        alpn,
        &[&TLS13, &TLS12],
        provider(),
        resumption,
    )
}
