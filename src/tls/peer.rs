//! Who the peer of an established connection is, read from its certificate chain: SPIFFE
//! ID, leaf hash for XFCC, leaf expiry. A full handshake's verifier already checked that
//! chain; a resumed session's handshake checked none, so its chain (kept in the session)
//! is verified again here against the material in force now, as a full handshake would.

use std::fmt;
use std::io;
use std::sync::Arc;

use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{CommonState, HandshakeKind};
use rustls_pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::verified_chains::VerifiedChains;
use super::verify::{check_server_id, leaf_spiffe_id_of, verify_peer, PeerCertError, Usage};
use crate::identity::IdentityHandle;
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

/// What a peer's chain must pass: against the trust bundles in force now (a trust anchor
/// removed since, or a certificate expired since, refuses it) and, for a server, the
/// outbound's expected SPIFFE IDs. The listeners' TLS verifiers run it at each full
/// handshake, and each listener runs it again on the peer of a resumed session, as a full
/// handshake would.
#[derive(Clone)]
pub struct PeerCheck {
    identity: IdentityHandle,
    algorithms: WebPkiSupportedAlgorithms,
    /// `None` for clients (inbound); the expected server IDs (outbound).
    server_ids: Option<Arc<[SpiffeId]>>,
    /// Chains that passed under the current material (shared by clones).
    verified: Arc<VerifiedChains>,
}

impl PeerCheck {
    /// For an inbound listener's clients.
    pub fn clients(identity: IdentityHandle) -> Self {
        Self::new(identity, None)
    }

    /// For an outbound's servers, which must present one of `server_ids`.
    pub fn servers(identity: IdentityHandle, server_ids: &[SpiffeId]) -> Self {
        Self::new(identity, Some(server_ids.into()))
    }

    fn new(identity: IdentityHandle, server_ids: Option<Arc<[SpiffeId]>>) -> Self {
        Self {
            identity,
            algorithms: super::provider().signature_verification_algorithms,
            server_ids,
            verified: Arc::default(),
        }
    }

    /// Verifies a peer's chain at `now` as a full handshake does: against the bundle of
    /// its trust domain in the current material and, for a server, against the expected
    /// IDs. A chain that passed under the same material within the last 60 s (and before
    /// its leaf expired) is not verified twice ([`VerifiedChains`]).
    pub(super) fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let material = self
            .identity
            .current()
            .ok_or_else(|| PeerCertError::NoIdentity.into_rustls())?;
        let seconds = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let chain = std::iter::once(end_entity).chain(intermediates);
        let usage = match self.server_ids {
            None => Usage::Client,
            Some(_) => Usage::Server,
        };
        self.verified
            .verify_once(material.generation, chain, seconds, || {
                // Authorisation only after cryptographic verification.
                let peer = verify_peer(
                    &material,
                    &self.algorithms,
                    end_entity,
                    intermediates,
                    now,
                    usage,
                )?;
                if let Some(expected) = &self.server_ids {
                    check_server_id(peer.id, expected).map_err(PeerCertError::into_rustls)?;
                }
                Ok(peer.not_after)
            })
    }

    /// Verifies a resumed session's chain (leaf first) as a full handshake would now.
    fn verify_again(&self, chain: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        self.verify_chain(leaf, intermediates, UnixTime::now())
    }
}

impl fmt::Debug for PeerCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerCheck")
            .field("identity", &self.identity.source())
            .field("server_ids", &self.server_ids)
            .finish_non_exhaustive()
    }
}

impl PeerIdentity {
    /// The identity of the peer of an established connection, refusing a resumed session
    /// whose peer no longer passes `check`. `Ok(None)`: no usable leaf.
    pub fn of_connection(connection: &CommonState, check: &PeerCheck) -> io::Result<Option<Self>> {
        let Some(chain) = connection.peer_certificates() else {
            return Ok(None);
        };
        let Some(peer) = Self::from_certs(chain) else {
            return Ok(None);
        };
        if connection.handshake_kind() == Some(HandshakeKind::Resumed) {
            check.verify_again(chain).map_err(|refused| {
                let error = PeerCertError::ResumedSession(Box::new(refused));
                io::Error::new(io::ErrorKind::InvalidData, error.into_rustls())
            })?;
        }
        Ok(Some(peer))
    }

    /// Reads the identity of an already verified peer from its certificate chain (leaf
    /// first, as `peer_certificates()` returns it); `None` if there is no usable leaf.
    pub fn from_certs(certs: &[CertificateDer<'_>]) -> Option<Self> {
        let leaf_der = certs.first()?;
        let (_, leaf) = X509Certificate::from_der(leaf_der).ok()?;
        Some(Self {
            spiffe_id: leaf_spiffe_id_of(&leaf).ok()?,
            leaf_sha256: hex::encode(Sha256::digest(leaf_der)),
            not_after: leaf.validity().not_after.timestamp(),
        })
    }
}
