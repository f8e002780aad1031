//! A peer's certificate, as any bytes: reading its SPIFFE ID never panics, and an identity
//! read from it is a well-formed SPIFFE ID with a path (a leaf's ID never names a bare
//! trust domain), the only URI SAN, with the leaf's real hash.
#![no_main]

use idgate::spiffe_id::SpiffeId;
use idgate::tls::{leaf_spiffe_id_of, PeerIdentity};
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

fuzz_target!(|der: &[u8]| {
    let from_leaf = X509Certificate::from_der(der).ok().map(|(_, leaf)| {
        let uris = leaf
            .subject_alternative_name()
            .ok()
            .flatten()
            .map_or(0, |san| {
                san.value
                    .general_names
                    .iter()
                    .filter(|name| matches!(name, GeneralName::URI(_)))
                    .count()
            });
        (leaf_spiffe_id_of(&leaf), uris)
    });
    let peer = PeerIdentity::from_certs(&[CertificateDer::from(der)]);
    match (&peer, &from_leaf) {
        (Some(peer), Some((Ok(id), uris))) => {
            assert_eq!(&peer.spiffe_id, id);
            assert_eq!(*uris, 1, "an identity from {uris} URI SANs");
            assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(id));
            assert!(!id.path().is_empty(), "{id}: a trust domain ID as a leaf's");
            assert_eq!(peer.leaf_sha256.len(), 64);
            assert!(peer
                .leaf_sha256
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
        (None, None | Some((Err(_), _))) => {}
        _ => panic!("PeerIdentity and leaf_spiffe_id_of disagree"),
    }
});
