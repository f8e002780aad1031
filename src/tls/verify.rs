//! The one SPIFFE peer verification both directions use: leaf shape (one `spiffe://` URI
//! SAN, CA:false, SPIFFE key usage), then the chain against the bundle of the *peer's*
//! trust domain with webpki. Refusals are `rustls::Error`s whose reason the failure
//! classifier recovers. It never decides what a verified peer may do.

use std::sync::Arc;

use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{CertificateError, OtherError};
use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::identity::Material;
use crate::spiffe_id::{SpiffeId, SpiffeIdError};

/// Why a certificate is not an acceptable X.509-SVID, beyond rustls's own variants.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerCertError {
    /// No URI SAN at all (DNS names do not count).
    #[error("the certificate has no spiffe:// URI SAN")]
    NoSpiffeId,
    /// More than one URI SAN.
    #[error("the certificate has {0} URI SANs; an X.509-SVID has exactly one")]
    MultipleUriSans(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("the URI SAN {uri:?} is not a valid SPIFFE ID: {reason}")]
    MalformedSpiffeId { uri: String, reason: SpiffeIdError },
    /// The URI SAN is a trust domain's own ID (no path), which names a signing
    /// certificate, never a workload (X.509-SVID 3.1, 5.2).
    #[error("the leaf's SPIFFE ID {0} has no path: a trust domain ID names no workload")]
    TrustDomainIdAsLeaf(SpiffeId),
    /// basicConstraints CA:true on a leaf.
    #[error("the leaf certificate is a CA certificate (basicConstraints CA:true)")]
    CaAsLeaf,
    /// Key usage not as SPIFFE requires.
    #[error("the leaf certificate's key usage {0}")]
    BadKeyUsage(&'static str),
    /// We hold no bundle for the peer's trust domain.
    #[error("trust domain {0} has no bundle")]
    UnknownTrustDomain(String),
    /// The server's ID is valid but not one this outbound expects.
    #[error("server presented {presented}, expected {expected}")]
    UnexpectedServerId {
        presented: SpiffeId,
        expected: String,
    },
    /// No SVID and bundles loaded yet.
    #[error("no SVID loaded yet")]
    NoIdentity,
    /// A resumed session's peer, verified again after the handshake (which verified no
    /// certificate), no longer passes against the current material: its certificate
    /// expired, its trust anchor was removed, its server ID is no longer expected.
    #[error("resumed session refused: {0}")]
    ResumedSession(Box<rustls::Error>),
    /// Chain verification failed for a reason without a rustls variant.
    #[error("certificate chain refused: {0}")]
    Chain(String),
}

impl PeerCertError {
    /// The metrics label for this reason.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoSpiffeId => "no_spiffe_id",
            Self::MultipleUriSans(_) => "multiple_uri_sans",
            Self::MalformedSpiffeId { .. } => "malformed_spiffe_id",
            Self::TrustDomainIdAsLeaf(_) => "trust_domain_id_as_leaf",
            Self::CaAsLeaf => "ca_as_leaf",
            Self::BadKeyUsage(_) => "bad_key_usage",
            Self::UnknownTrustDomain(_) => "unknown_trust_domain",
            Self::UnexpectedServerId { .. } => "unexpected_server_id",
            Self::NoIdentity => "no_identity",
            Self::ResumedSession(refused) => super::failure::tls_reason(refused),
            Self::Chain(_) => "bad_certificate",
        }
    }

    /// As the `rustls::Error` a verifier returns.
    pub fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }
}

/// Which EKU the peer's leaf must allow.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Usage {
    /// The peer is a client (inbound).
    Client,
    /// The peer is a server (outbound).
    Server,
}

/// The SPIFFE ID of a parsed certificate: exactly one URI SAN, a well-formed `spiffe://` ID.
pub fn spiffe_id_of(cert: &X509Certificate<'_>) -> Result<SpiffeId, PeerCertError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PeerCertError::Chain(format!("subjectAltName: {e}")))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|san| san.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris[..] {
        [] => Err(PeerCertError::NoSpiffeId),
        [uri] => SpiffeId::parse(uri).map_err(|reason| PeerCertError::MalformedSpiffeId {
            uri: uri.to_owned(),
            reason,
        }),
        _ => Err(PeerCertError::MultipleUriSans(uris.len())),
    }
}

/// The SPIFFE ID of a leaf SVID: [`spiffe_id_of`], with a non-root path (X.509-SVID 5.2:
/// `spiffe://TD` alone names a trust domain, and `spiffe://TD/*` rules would miss it).
pub fn leaf_spiffe_id_of(leaf: &X509Certificate<'_>) -> Result<SpiffeId, PeerCertError> {
    let id = spiffe_id_of(leaf)?;
    if id.path().is_empty() {
        return Err(PeerCertError::TrustDomainIdAsLeaf(id));
    }
    Ok(id)
}

/// Checks an X.509-SVID leaf's shape: SPIFFE ID, CA:false, SPIFFE key usage.
pub(crate) fn check_leaf(leaf: &X509Certificate<'_>) -> Result<SpiffeId, PeerCertError> {
    let id = leaf_spiffe_id_of(leaf)?;
    let constraints = leaf
        .basic_constraints()
        .map_err(|e| PeerCertError::Chain(format!("basicConstraints: {e}")))?;
    if constraints.is_some_and(|bc| bc.value.ca) {
        return Err(PeerCertError::CaAsLeaf);
    }
    let usage = leaf
        .key_usage()
        .map_err(|e| PeerCertError::Chain(format!("keyUsage: {e}")))?
        .ok_or(PeerCertError::BadKeyUsage(
            "is missing; digitalSignature is required",
        ))?;
    if !usage.value.digital_signature() {
        return Err(PeerCertError::BadKeyUsage("lacks digitalSignature"));
    }
    if usage.value.key_cert_sign() || usage.value.crl_sign() {
        return Err(PeerCertError::BadKeyUsage(
            "includes keyCertSign or cRLSign, which a leaf must not",
        ));
    }
    Ok(id)
}

/// A peer whose chain verified.
pub(crate) struct VerifiedPeer {
    pub id: SpiffeId,
    /// The leaf's notAfter, Unix seconds.
    pub not_after: i64,
}

/// Verifies a peer's chain against `material`.
pub(crate) fn verify_peer(
    material: &Material,
    algorithms: &WebPkiSupportedAlgorithms,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: Usage,
) -> Result<VerifiedPeer, rustls::Error> {
    let (_, leaf) = X509Certificate::from_der(end_entity)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let id = check_leaf(&leaf).map_err(PeerCertError::into_rustls)?;
    let td = id.trust_domain_name();
    let anchors = material
        .bundles
        .get(td)
        .ok_or_else(|| PeerCertError::UnknownTrustDomain(td.to_owned()).into_rustls())?;
    let cert = EndEntityCert::try_from(end_entity).map_err(chain_error)?;
    let usage = match usage {
        Usage::Client => KeyUsage::client_auth(),
        Usage::Server => KeyUsage::server_auth(),
    };
    cert.verify_for_usage(
        algorithms.all,
        anchors,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(chain_error)?;
    Ok(VerifiedPeer {
        id,
        not_after: leaf.validity().not_after.timestamp(),
    })
}

/// Accepts a verified server whose ID is one of `server_ids` (an outbound's expected IDs).
pub(crate) fn check_server_id(id: SpiffeId, server_ids: &[SpiffeId]) -> Result<(), PeerCertError> {
    if server_ids.contains(&id) {
        return Ok(());
    }
    let expected = match server_ids {
        [one] => one.to_string(),
        ids => {
            let ids: Vec<&str> = ids.iter().map(SpiffeId::as_str).collect();
            format!("one of [{}]", ids.join(", "))
        }
    };
    Err(PeerCertError::UnexpectedServerId {
        presented: id,
        expected,
    })
}

/// Maps webpki's refusal to rustls's standard variants where one fits.
fn chain_error(error: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    #[allow(deprecated)]
    let error = match error {
        E::CertExpired { time, not_after } => CertificateError::ExpiredContext { time, not_after },
        E::CertNotValidYet { time, not_before } => {
            CertificateError::NotValidYetContext { time, not_before }
        }
        // Path building checks signatures only against issuers whose name matches, so a
        // bad signature here means another CA with the same name (a regenerated dev CA,
        // a rogue one): to the operator that is a certificate from an untrusted CA.
        E::UnknownIssuer | E::InvalidSignatureForPublicKey => CertificateError::UnknownIssuer,
        E::CertRevoked => CertificateError::Revoked,
        E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) => {
            CertificateError::InvalidPurpose
        }
        E::BadDer | E::BadDerTime => CertificateError::BadEncoding,
        E::CaUsedAsEndEntity => return PeerCertError::CaAsLeaf.into_rustls(),
        other => return PeerCertError::Chain(other.to_string()).into_rustls(),
    };
    rustls::Error::InvalidCertificate(error)
}
