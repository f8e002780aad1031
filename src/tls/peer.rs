//! Who the peer of an established connection is, read from its (already verified)
//! certificate chain: SPIFFE ID, leaf hash for XFCC, leaf expiry. Only chains that passed
//! the handshake verifier reach it; it verifies nothing itself except that a resumed
//! session's certificate has not expired since.

use std::io;
use std::time::SystemTime;

use rustls::{CommonState, HandshakeKind};
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::verify::{spiffe_id_of, PeerCertError};
use crate::identity::unix_seconds;
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
    /// The identity of the peer of an established connection. A resumed session verified
    /// no certificate in this handshake, so its peer's leaf must also still be valid now.
    /// `Ok(None)`: no usable leaf.
    pub fn of_connection(connection: &CommonState) -> io::Result<Option<Self>> {
        let Some(peer) = connection.peer_certificates().and_then(Self::from_certs) else {
            return Ok(None);
        };
        let resumed = connection.handshake_kind() == Some(HandshakeKind::Resumed);
        if resumed && unix_seconds(SystemTime::now()) > peer.not_after {
            let error = PeerCertError::SessionOutlivedCertificate(peer.not_after);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                error.into_rustls(),
            ));
        }
        Ok(Some(peer))
    }

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
