//! `normalize_path`, the one place that decides what a request path means: whatever it
//! returns is normal (absolute, no query, only bytes RFC 3986 allows raw in a path, no
//! `.`, `..` or empty inner segment, no `.`/`..` with `;` parameters, every escape
//! upper-case and not unreserved),
//! normalising it again changes nothing, and an input returned as is was already normal.
#![no_main]

use std::borrow::Cow;

use idgate::policy::normalize_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| {
    let Ok(path) = normalize_path(raw) else {
        return;
    };
    assert!(path.starts_with('/'), "{raw:?} -> {path:?}: not absolute");
    assert!(!path.contains('?'), "{raw:?} -> {path:?}: query kept");
    assert!(
        path.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b)),
        "{raw:?} -> {path:?}: a byte RFC 3986 does not allow raw"
    );
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        assert!(
            !(segment.is_empty() && !last) && *segment != "." && *segment != "..",
            "{raw:?} -> {path:?}: segment {segment:?} left"
        );
        // What a servlet container would resolve as a dot segment.
        let name = segment.split(';').next().unwrap_or_default();
        let name = name.split("%3B").next().unwrap_or_default();
        assert!(
            !matches!(name, "." | ".."),
            "{raw:?} -> {path:?}: dot segment {segment:?} with parameters left"
        );
    }
    let bytes = path.as_bytes();
    for (i, _) in path.match_indices('%') {
        let escape = &bytes[i + 1..i + 3];
        assert!(
            escape
                .iter()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()),
            "{raw:?} -> {path:?}: escape not upper-case"
        );
        let value = u8::from_str_radix(std::str::from_utf8(escape).unwrap(), 16).unwrap();
        assert!(
            !(value.is_ascii_alphanumeric() || b"-._~".contains(&value)),
            "{raw:?} -> {path:?}: unreserved escape left"
        );
        assert!(
            !b"/\\\0".contains(&value),
            "{raw:?} -> {path:?}: forbidden escape"
        );
    }
    match normalize_path(&path) {
        Ok(Cow::Borrowed(again)) => assert_eq!(again, &*path, "{raw:?}: not idempotent"),
        other => panic!("{raw:?} -> {path:?} -> {other:?}: not a fixed point"),
    }
    if let Cow::Borrowed(same) = path {
        let before_query = raw.split_once('?').map_or(raw, |(p, _)| p);
        assert_eq!(same, before_query, "{raw:?}: borrowed something else");
    }
});
