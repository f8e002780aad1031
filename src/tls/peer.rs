//! Who the peer of an established connection is, read from its (already verified)
//! certificate chain: SPIFFE ID, leaf hash for XFCC, leaf expiry. It never verifies
//! anything itself; only chains that passed the handshake verifier reach it.

use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::verify::spiffe_id_of;
use crate::spiffe_id::SpiffeId;

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
    /// Reads the identity of an already verified peer from its certificate chain (leaf
    /// first, as `peer_certificates()` returns it); `None` if there is no usable leaf.
    pub fn from_certs(certs: &[CertificateDer<'_>]) -> Option<Self> {
        let leaf_der = certs.first()?;
        let (_, leaf) = X509Certificate::from_der(leaf_der).ok()?;
        Some(Self {
            spiffe_id: spiffe_id_of(&leaf).ok()?,
            leaf_sha256: hex::encode(Sha256::digest(leaf_der)),
            not_after: leaf.validity().not_after.timestamp(),
        })
    }
}
