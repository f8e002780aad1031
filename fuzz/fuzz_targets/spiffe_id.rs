//! SPIFFE ID parsing: an accepted ID is exactly its input, re-parses to itself, and its
//! parts (trust domain, path, segments) rebuild it and obey the SPIFFE ID spec.
#![no_main]

use idgate::spiffe_id::{SpiffeId, TrustDomain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|uri: &str| {
    if let Ok(td) = TrustDomain::new(uri) {
        assert!(!td.as_str().is_empty());
        assert_eq!(TrustDomain::new(td.as_str()).as_ref(), Ok(&td));
    }
    let Ok(id) = SpiffeId::parse(uri) else {
        return;
    };
    assert_eq!(id.as_str(), uri);
    assert!(uri.len() <= 2048);
    assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(&id));
    assert_eq!(
        format!("spiffe://{}{}", id.trust_domain_name(), id.path()),
        uri
    );
    let td = id.trust_domain_name();
    assert!(!td.is_empty());
    assert!(
        td.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b)),
        "{uri:?}: trust domain {td:?}"
    );
    assert_eq!(id.trust_domain().as_str(), td);
    let path = id.path();
    assert!(path.is_empty() || path.starts_with('/'));
    let segments: Vec<&str> = id.segments().collect();
    let rebuilt: String = segments.iter().map(|s| format!("/{s}")).collect();
    assert_eq!(rebuilt, path, "{uri:?}: segments {segments:?}");
    for segment in segments {
        assert!(segment != "." && segment != "..", "{uri:?}: dot segment");
        assert!(
            segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)),
            "{uri:?}: segment {segment:?}"
        );
    }
});
