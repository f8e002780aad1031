//! The SVID and trust bundles as rustls wants them, parsed once per update.
//!
//! Every source (files, SPIRE) turns DER into these types here, so a bad SVID or bundle is
//! refused before it is published. Nothing here reads files or talks to an agent; errors
//! say what is wrong, and the caller adds which file or source it came from.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe_id::{SpiffeId, SpiffeIdError};
use crate::tls::PeerCertError;

/// Why identity material could not be built.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Anything a source reports in its own words.
    #[error("{0}")]
    Invalid(String),
    /// The SVID chain holds no certificate.
    #[error("no certificate found")]
    EmptyChain,
    /// A certificate is not valid DER X.509.
    #[error("certificate {index} cannot be parsed: {reason}")]
    BadCertificate { index: usize, reason: String },
    /// The SVID leaf's SPIFFE ID is missing or malformed.
    #[error("the SVID's SPIFFE ID: {0}")]
    SvidId(PeerCertError),
    /// The private key is not usable with the ring provider.
    #[error("the private key cannot be used: {0}")]
    BadKey(rustls::Error),
    /// The private key belongs to another certificate.
    #[error("key does not match certificate")]
    KeyMismatch,
    /// A trust bundle holds no certificate.
    #[error("the bundle of {0} holds no certificate")]
    EmptyBundle(String),
    /// A bundle certificate cannot serve as trust anchor.
    #[error("the bundle of {trust_domain}: certificate {index} is not a usable CA: {reason}")]
    BadAnchor {
        trust_domain: String,
        index: usize,
        reason: String,
    },
    /// A trust domain name is malformed.
    #[error("{name:?} is not a valid trust domain: {reason}")]
    TrustDomain { name: String, reason: SpiffeIdError },
    /// The SVID's leaf has expired.
    #[error("the certificate expired at {} (now {})", rfc3339(*not_after), rfc3339(*now))]
    Expired { not_after: i64, now: i64 },
    /// The SVID's leaf is not valid yet (beyond the allowed clock skew).
    #[error("the certificate is not valid before {} (now {}; {} s of clock skew are allowed)", rfc3339(*not_before), rfc3339(*now), NOT_BEFORE_SKEW.as_secs())]
    NotYetValid { not_before: i64, now: i64 },
    /// A file could not be read or holds the wrong thing.
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    /// An error about the material in a file.
    #[error("{}: {error}", path.display())]
    InFile {
        path: PathBuf,
        error: Box<IdentityError>,
    },
}

impl IdentityError {
    /// Whether this is (or wraps) [`IdentityError::NotYetValid`]: the same material
    /// becomes acceptable with time, unchanged.
    pub fn is_not_yet_valid(&self) -> bool {
        match self {
            Self::NotYetValid { .. } => true,
            Self::InFile { error, .. } => error.is_not_yet_valid(),
            _ => false,
        }
    }
}

/// How far in the future a new SVID's notBefore may lie and still be taken on reload:
/// the issuer's clock and ours may differ a little, and an SVID issued a second ago by a
/// CA whose clock runs ahead is still a good SVID.
pub const NOT_BEFORE_SKEW: Duration = Duration::from_secs(60);

/// Seconds since the Unix epoch as RFC 3339 (or the number, if out of range).
fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// Our own X.509-SVID: certificate chain (leaf first) and private key.
#[derive(Debug)]
pub struct Svid {
    /// The SPIFFE ID in the leaf's URI SAN.
    pub spiffe_id: SpiffeId,
    /// Chain and signing key, ready for rustls.
    pub certified_key: Arc<CertifiedKey>,
    /// Leaf serial number, lowercase hex.
    pub serial: String,
    /// Leaf notAfter, seconds since the Unix epoch.
    pub not_after: i64,
}

impl Svid {
    /// Builds an SVID from a DER chain (leaf first) and its private key.
    /// The leaf must carry exactly one well-formed `spiffe://` URI SAN and match the key.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, IdentityError> {
        let leaf_der = chain.first().ok_or(IdentityError::EmptyChain)?;
        let (_, leaf) =
            X509Certificate::from_der(leaf_der).map_err(|e| IdentityError::BadCertificate {
                index: 0,
                reason: e.to_string(),
            })?;
        let spiffe_id = crate::tls::leaf_spiffe_id_of(&leaf).map_err(IdentityError::SvidId)?;
        let serial = format!("{:x}", leaf.serial);
        let not_after = leaf.validity().not_after.timestamp();
        let provider = crate::tls::provider();
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(IdentityError::BadKey)?;
        let certified_key = CertifiedKey::new(chain, signing_key);
        match certified_key.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(IdentityError::KeyMismatch)
            }
            // ring always knows the public key; an unknown answer is not a mismatch.
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(other) => return Err(IdentityError::BadKey(other)),
        }
        Ok(Self {
            spiffe_id,
            certified_key: Arc::new(certified_key),
            serial,
            not_after,
        })
    }

    /// Refuses a leaf that has expired at `now` (seconds since the Unix epoch) or whose
    /// notBefore lies more than [`NOT_BEFORE_SKEW`] after it.
    pub fn check_validity(&self, now: i64) -> Result<(), IdentityError> {
        if self.not_after < now {
            return Err(IdentityError::Expired {
                not_after: self.not_after,
                now,
            });
        }
        let skew = i64::try_from(NOT_BEFORE_SKEW.as_secs()).unwrap_or(i64::MAX);
        match self.not_before() {
            Some(not_before) if not_before > now.saturating_add(skew) => {
                Err(IdentityError::NotYetValid { not_before, now })
            }
            _ => Ok(()),
        }
    }

    /// The leaf's notBefore, seconds since the Unix epoch (parsed again: only reloads ask).
    fn not_before(&self) -> Option<i64> {
        let leaf = self.certified_key.cert.first()?;
        let (_, leaf) = X509Certificate::from_der(leaf).ok()?;
        Some(leaf.validity().not_before.timestamp())
    }
}

/// Trust anchors per trust domain (our own and federated ones).
#[derive(Debug, Default)]
pub struct TrustBundles {
    anchors: HashMap<String, Arc<[TrustAnchor<'static>]>>,
}

impl TrustBundles {
    /// Adds (or replaces) the bundle of one trust domain from DER certificates.
    /// Every certificate becomes a trust anchor; an empty bundle is refused.
    pub fn insert_der(
        &mut self,
        trust_domain: &str,
        certs: &[CertificateDer<'_>],
    ) -> Result<(), IdentityError> {
        let name = crate::spiffe_id::TrustDomain::new(trust_domain)
            .map_err(|reason| IdentityError::TrustDomain {
                name: trust_domain.to_owned(),
                reason,
            })?
            .to_string();
        if certs.is_empty() {
            return Err(IdentityError::EmptyBundle(name));
        }
        let anchors = certs
            .iter()
            .enumerate()
            .map(|(index, cert)| {
                webpki::anchor_from_trusted_cert(cert)
                    .map(|anchor| anchor.to_owned())
                    .map_err(|e| IdentityError::BadAnchor {
                        trust_domain: name.clone(),
                        index,
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.anchors.insert(name, anchors.into());
        Ok(())
    }

    /// The anchors of one trust domain, if we have its bundle.
    pub fn get(&self, trust_domain: &str) -> Option<&[TrustAnchor<'static>]> {
        self.anchors.get(trust_domain).map(|a| &a[..])
    }

    /// The trust domains we hold bundles for, sorted.
    pub fn trust_domains(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.anchors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// One coherent snapshot: the SVID and the bundles published together.
#[derive(Debug)]
pub struct Material {
    /// Our SVID.
    pub svid: Svid,
    /// Bundles to verify peers with.
    pub bundles: TrustBundles,
    /// Increases by one with each publish.
    pub generation: u64,
    /// When this snapshot was published.
    pub published_at: SystemTime,
}

impl Material {
    pub(super) fn new(svid: Svid, bundles: TrustBundles, generation: u64) -> Self {
        Self {
            svid,
            bundles,
            generation,
            published_at: SystemTime::now(),
        }
    }
}
