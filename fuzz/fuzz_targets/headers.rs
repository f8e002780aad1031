//! The header rules of the data path, over any headers a client can send: hop-by-hop
//! removal (`Connection` and everything it names, any `TE` but `trailers`), HTTP/2
//! preparation (changes no name or value), request IDs (kept when usable: non-empty, at
//! most 128 bytes, UTF-8; else one fresh one), XFCC (exactly idgate's one value) and the
//! settled Host (one, the authority the upstream is named by).
#![no_main]

use arbitrary::Arbitrary;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, TE};
use http::uri::Authority;
use http::{Uri, Version};
use idgate::proxy::headers::{
    prepare_for_hpack, set_xfcc, settle_host, strip_hop_by_hop, BadHost, XFCC,
};
use idgate::proxy::request_id::{ensure_request_id, REQUEST_ID};
use libfuzzer_sys::fuzz_target;

/// RFC 9110 7.6.1's list (`Trailer` is end to end: HTTP/1.1 sends only the trailers it
/// names), and `Proxy-Authorization`, which the first proxy consumes.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "transfer-encoding",
    "upgrade",
];

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    headers: Vec<(&'a [u8], &'a [u8])>,
    /// Also give a few headers a name the rules know, to reach them more often.
    known: Vec<(u8, &'a [u8])>,
    /// The request target's authority (absolute form, `:authority`), when it parses.
    authority: Option<&'a [u8]>,
    http11: bool,
}

const KNOWN: [&str; 7] = [
    "connection",
    "host",
    "te",
    "x-request-id",
    "x-forwarded-client-cert",
    "upgrade",
    "keep-alive",
];

fuzz_target!(|input: Input<'_>| {
    let mut headers = HeaderMap::new();
    let named = input
        .headers
        .iter()
        .map(|&(n, v)| (HeaderName::from_bytes(n).ok(), v));
    let known = input.known.iter().map(|&(i, v)| {
        let name = KNOWN[usize::from(i) % KNOWN.len()];
        (Some(HeaderName::from_static(name)), v)
    });
    for (name, value) in named.chain(known) {
        if let (Some(name), Ok(value)) = (name, HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        }
    }
    check_request_id(headers.clone());
    check_hpack(headers.clone());
    check_strip(headers.clone());
    check_host(headers.clone(), input.authority, input.http11);
    let xfcc = HeaderValue::from_static("By=spiffe://a/b;Hash=00;URI=spiffe://c/d");
    set_xfcc(&mut headers, xfcc.clone());
    assert_eq!(headers.get_all(XFCC).iter().collect::<Vec<_>>(), [&xfcc]);
});

fn check_strip(mut headers: HeaderMap) {
    let before = headers.clone();
    strip_hop_by_hop(&mut headers);
    let named_by_connection: Vec<HeaderName> = before
        .get_all(CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .filter_map(|token| HeaderName::from_bytes(token.trim_ascii()).ok())
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .map(|n| HeaderName::from_static(n))
        .chain(named_by_connection.clone())
    {
        assert!(!headers.contains_key(&name), "{name} left in {headers:?}");
    }
    for value in headers.get_all(TE) {
        assert!(
            value.as_bytes().eq_ignore_ascii_case(b"trailers"),
            "TE {value:?} left"
        );
    }
    for (name, _) in &before {
        let hop =
            HOP_BY_HOP.contains(&name.as_str()) || named_by_connection.contains(name) || name == TE;
        if !hop {
            let kept: Vec<_> = headers.get_all(name).iter().collect();
            let sent: Vec<_> = before.get_all(name).iter().collect();
            assert_eq!(kept, sent, "end-to-end header {name} changed");
        }
    }
}

fn check_hpack(mut headers: HeaderMap) {
    let before = headers.clone();
    prepare_for_hpack(&mut headers);
    assert_eq!(headers, before);
    for value in headers.get_all(REQUEST_ID) {
        assert!(value.is_sensitive());
    }
}

fn check_request_id(mut headers: HeaderMap) {
    let sent = headers.get(REQUEST_ID).cloned();
    let id = ensure_request_id(&mut headers);
    let value = id.to_header_value();
    // Every ID kept or made is UTF-8, so the decision log names it.
    assert_eq!(Ok(id.as_str()), std::str::from_utf8(value.as_bytes()));
    match sent {
        Some(sent)
            if !sent.is_empty()
                && sent.len() <= 128
                && std::str::from_utf8(sent.as_bytes()).is_ok() =>
        {
            assert_eq!(value, sent)
        }
        _ => {
            assert_eq!(
                headers.get_all(REQUEST_ID).iter().collect::<Vec<_>>(),
                [&value]
            );
            assert!(!value.is_empty() && value.len() <= 128);
        }
    }
}

fn check_host(mut headers: HeaderMap, authority: Option<&[u8]>, http11: bool) {
    let target = authority.and_then(|a| Authority::try_from(a).ok());
    let uri = match &target {
        Some(a) => Uri::builder()
            .scheme("https")
            .authority(a.clone())
            .path_and_query("/")
            .build()
            .unwrap(),
        None => Uri::from_static("/"),
    };
    let version = if http11 {
        Version::HTTP_11
    } else {
        Version::HTTP_2
    };
    let sent = headers.get_all(HOST).iter().count();
    match settle_host(version, &uri, &mut headers) {
        Err(BadHost::Several) => assert!(sent > 1),
        Err(BadHost::Missing) => assert!(sent == 0 && http11 && target.is_none()),
        Err(BadHost::Invalid) => assert!(sent == 1 || target.is_some()),
        Ok(named) => {
            assert!(sent <= 1);
            let hosts: Vec<_> = headers.get_all(HOST).iter().collect();
            match named {
                // The Host the upstream receives is the authority it is named by.
                Some(named) => {
                    assert_eq!(hosts, [named.as_str()], "{uri}");
                    assert!(!named.as_str().contains('@'));
                    assert_eq!(
                        named.as_str().parse::<Authority>().ok(),
                        Some(named.clone())
                    );
                }
                None => {
                    assert!(target.is_none());
                    assert!(hosts.iter().all(|h| h.is_empty()), "{hosts:?}");
                }
            }
        }
    }
}
