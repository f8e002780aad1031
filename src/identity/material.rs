//! The SVID and trust bundles as rustls wants them, parsed once per update.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor};

use crate::spiffe_id::SpiffeId;

/// Why identity material could not be built.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}")]
    Invalid(String),
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
    pub fn from_der(
        _chain: Vec<CertificateDer<'static>>,
        _key: PrivateKeyDer<'static>,
    ) -> Result<Self, IdentityError> {
        todo!("helper B")
    }
}

/// Trust anchors per trust domain (our own and federated ones).
#[derive(Debug, Default)]
pub struct TrustBundles {
    anchors: HashMap<String, Arc<[TrustAnchor<'static>]>>,
}

impl TrustBundles {
    /// Adds (or replaces) the bundle of one trust domain from DER certificates.
    pub fn insert_der(
        &mut self,
        _trust_domain: &str,
        _certs: &[CertificateDer<'_>],
    ) -> Result<(), IdentityError> {
        todo!("helper B")
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
