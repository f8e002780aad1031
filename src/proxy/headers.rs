//! Header rules of a forwarding proxy: hop-by-hop removal (keeping an upgrade's), the
//! Host the upstream receives, XFCC, HTTP/2 readiness.
//!
//! Pure functions over `HeaderMap`s, shared by inbound and outbound. Never reads bodies.

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Uri, Version};

/// Envoy's client-certificate forwarding header.
pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Headers that describe one connection and never travel past a proxy (RFC 9110 7.6.1),
/// and `Proxy-Authorization`, which the first proxy consumes (RFC 9110 11.7.4): an app
/// pointed at the outbound with `HTTP_PROXY=http://user:pass@...` sends it.
/// `Trailer` is not one: it is end to end, and HTTP/1.1 (hyper's encoder) sends only the
/// trailers it declares. HTTP/2 allows it too.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers and every header the `Connection` header names.
/// `TE` is left as one `TE: trailers` when any of its values lists `trailers` (gRPC needs
/// it end to end, and HTTP/2 allows no other value), and removed otherwise.
///
/// A request's headers must go through this (or [`strip_request_hop_by_hop`]) before
/// idgate adds its own: `Connection` may name any header, XFCC and `x-request-id`
/// included.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the few names present finds which hop-by-hop names are there (most
    // requests carry none; an HTTP/1.1 response often only `Connection`): only those are
    // removed, each removal being a hashed lookup.
    let mut present = 0u8; // bit i: HOP_BY_HOP[i]
    let mut te = false;
    for name in headers.keys() {
        match HOP_BY_HOP.iter().position(|hop| hop == name) {
            Some(index) => present |= 1 << index,
            None => te |= name == header::TE,
        }
    }
    if present == 0 && !te {
        return;
    }
    if present & 1 != 0 {
        remove_connection_options(headers);
    }
    for (index, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << index) != 0 {
            headers.remove(name);
        }
    }
    if te {
        keep_only_te_trailers(headers);
    }
}

/// Removes every header a `Connection` value names (RFC 9110 7.6.1), but for the names of
/// `HOP_BY_HOP`, which [`strip_hop_by_hop`] removes when present without parsing a name
/// and looking it up (`Connection: keep-alive`, the usual HTTP/1.1 response).
fn remove_connection_options(headers: &mut HeaderMap) {
    // Each value is cloned (a reference count) before the names in it are removed: no list
    // and no owned header names on the way.
    let mut nth = 0;
    while let Some(value) = headers.get_all(header::CONNECTION).iter().nth(nth).cloned() {
        for element in list_elements(&value) {
            // A header name is ASCII: an element that is not UTF-8 names no header. A
            // `&str` key is looked up without allocating (lower-cased on the stack).
            let Ok(name) = std::str::from_utf8(element) else {
                continue;
            };
            let hop_by_hop = |hop: &HeaderName| name.eq_ignore_ascii_case(hop.as_str());
            if !HOP_BY_HOP.iter().any(hop_by_hop) {
                headers.remove(name);
            }
        }
        nth += 1;
    }
}

/// Leaves one `TE: trailers` when any `TE` value lists the `trailers` token, else no `TE`.
fn keep_only_te_trailers(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::TE).iter();
    let alone = values.next().is_some_and(|value| value == "trailers") && values.next().is_none();
    if alone {
        // The usual case (gRPC): nothing to change.
        return;
    }
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|value| list_elements(value).any(|element| element.eq_ignore_ascii_case(b"trailers")));
    headers.remove(header::TE);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The elements of a list-valued header, as bytes trimmed of whitespace (RFC 9110 5.6.1):
/// a value need not be visible ASCII (obs-text) for its other elements to count.
fn list_elements(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|&byte| byte == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|element| !element.is_empty())
}

/// [`strip_hop_by_hop`] for a request received from a client, keeping the two headers a
/// WebSocket upgrade needs (`Connection: upgrade` and `Upgrade: websocket`): run it first,
/// before idgate adds a header, and before the policy judges the request, so the policy
/// sees what the upstream will receive.
///
/// An upgrade to any other protocol is dropped with the other hop-by-hop headers, and the
/// request goes on as a plain one: a tunnel is judged once, so one that carries HTTP
/// (`Upgrade: h2c`, say) would let every later request on it past the policy.
pub fn strip_request_hop_by_hop(headers: &mut HeaderMap) {
    let upgrade = upgrade_protocol(headers).filter(is_websocket);
    strip_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        keep_upgrade(headers, protocol);
    }
}

/// The `Upgrade` value of a message that asks for (or agrees to) an upgrade: its
/// `Connection` lists `upgrade`.
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(list_elements)
        .any(|element| element.eq_ignore_ascii_case(b"upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Whether an `Upgrade` value asks for WebSocket alone (RFC 6455 4.1).
fn is_websocket(protocols: &HeaderValue) -> bool {
    let mut listed = list_elements(protocols).peekable();
    listed.peek().is_some() && listed.all(|protocol| protocol.eq_ignore_ascii_case(b"websocket"))
}

/// Puts back the two headers an upgrade needs after hop-by-hop removal.
pub fn keep_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Why a request's `Host` cannot be settled: a server must answer 400 (RFC 9112 3.2).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadHost {
    /// More than one `Host` header.
    #[error("more than one Host header")]
    Several,
    /// An HTTP/1.1 request with neither a `Host` header nor an absolute target.
    #[error("HTTP/1.1 request without a Host header")]
    Missing,
    /// A `Host`, or a target's authority, that is not `host[:port]`.
    #[error("Host is not host[:port]")]
    Invalid,
}

/// Makes a request's `Host` the one the upstream will receive, so the policy judges that
/// one, and returns it as the authority to name the upstream by: the target's authority
/// when the request has one (an HTTP/1.1 absolute-form target, an HTTP/2 `:authority`),
/// replacing any `Host` received (RFC 9112 3.2.2, RFC 9113 8.3.1), else the `Host`
/// received; either must be `host[:port]` (a `Host` may be empty: no authority), and
/// HTTP/1.1 requires one. Refuses a request with several.
pub fn settle_host(
    version: Version,
    uri: &Uri,
    headers: &mut HeaderMap,
) -> Result<Option<Authority>, BadHost> {
    let mut received = headers.get_all(header::HOST).iter();
    let first = received.next();
    if received.next().is_some() {
        return Err(BadHost::Several);
    }
    let Some(authority) = uri.authority() else {
        return match first {
            None if version == Version::HTTP_11 => Err(BadHost::Missing),
            None => Ok(None),
            Some(host) if host.is_empty() => Ok(None),
            Some(host) => host_authority(host.as_bytes()).map(Some),
        };
    };
    // A Host names no user (userinfo is deprecated in http(s) URIs, RFC 9110 4.2.4).
    let authority = match authority.as_str().rsplit_once('@') {
        Some((_, host)) => host_authority(host.as_bytes())?,
        None if port_is_digits(authority.as_str().as_bytes()) => authority.clone(),
        None => return Err(BadHost::Invalid),
    };
    if first.is_some_and(|value| value.as_bytes() == authority.as_str().as_bytes()) {
        // The usual HTTP/2 request from a peer sidecar, which sends both.
        return Ok(Some(authority));
    }
    match HeaderValue::from_str(authority.as_str()) {
        Ok(value) => headers.insert(header::HOST, value),
        // Cannot happen (an authority is a valid value); the received one must not stay.
        Err(_) => headers.remove(header::HOST),
    };
    Ok(Some(authority))
}

/// A `Host` value as an authority: `uri-host [":" port]` (RFC 9112 3.2), no userinfo.
fn host_authority(value: &[u8]) -> Result<Authority, BadHost> {
    if value.contains(&b'@') || !port_is_digits(value) {
        return Err(BadHost::Invalid);
    }
    Authority::try_from(value).map_err(|_| BadHost::Invalid)
}

/// Whether the port after a host (if any) is `*DIGIT` (RFC 3986 3.2.3).
fn port_is_digits(host_and_port: &[u8]) -> bool {
    match host_and_port.iter().rposition(|&byte| byte == b':') {
        // The last colon of an IPv6 literal, without port.
        Some(colon) if host_and_port[colon..].contains(&b']') => true,
        Some(colon) => host_and_port[colon + 1..].iter().all(u8::is_ascii_digit),
        None => true,
    }
}

/// Values longer than this stay where they are: an HPACK table of the default 4 KiB never
/// indexes them (h2 indexes no header larger than three quarters of its table).
const MAX_INDEXED_VALUE: usize = 3 * 1024;

/// Headers whose every value is new: request IDs, and the trace headers of common tracers
/// that carry the calling span's own ID. An HPACK table gains nothing by indexing one:
/// each would push out an entry that does repeat, and stay until pushed out in turn.
/// (Headers carrying only the trace's ID or the parent span's, such as `x-b3-traceid`,
/// repeat across the calls one span makes, and stay indexable.) h2 already leaves the
/// headers of nghttp2's list (`:path`, `content-length`, `etag` ...) out of its table.
fn is_new_in_every_message(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "x-request-id"
            | "traceparent"
            | "b3"
            | "x-b3-spanid"
            | "uber-trace-id"
            | "x-amzn-trace-id"
            | "x-cloud-trace-context"
            | "x-datadog-parent-id"
            | "sentry-trace"
    )
}

/// Whether an HTTP/2 encoder's table may keep this value (it never indexes a sensitive one).
fn may_be_indexed(value: &HeaderValue) -> bool {
    !value.is_sensitive() && value.len() <= MAX_INDEXED_VALUE
}

/// Readies a message's headers for an HTTP/2 encoder, whose HPACK table keeps each value
/// it indexes until later headers push it out. Called on every message that leaves over
/// HTTP/2.
///
/// - Values new in every message (request and trace IDs) are marked sensitive, so they
///   are sent as literals never indexed (RFC 7541, 6.2.3) and neither end's table keeps
///   them: idgate adds an `x-request-id` to every request, and between two sidecars each
///   one took a slot in both tables.
/// - The other values an encoder may keep are copied into one small allocation of the
///   message's own. A value parsed from an HTTP/1.1 message is a slice of its
///   connection's read buffer (8 KiB or more): a table that kept such values kept whole
///   buffers, 260 KiB per idle connection after 50 requests with unique IDs.
pub fn prepare_for_hpack(headers: &mut HeaderMap) {
    let mut total = 0;
    for (name, value) in headers.iter_mut() {
        if is_new_in_every_message(name) {
            value.set_sensitive(true);
        } else if may_be_indexed(value) {
            total += value.len();
        }
    }
    if total == 0 {
        return;
    }
    let mut block = BytesMut::with_capacity(total);
    for value in headers.values_mut().filter(|value| may_be_indexed(value)) {
        block.extend_from_slice(value.as_bytes());
    }
    let mut block = block.freeze();
    for value in headers.values_mut().filter(|value| may_be_indexed(value)) {
        let own = block.split_to(value.len());
        // Cannot fail (the bytes were a valid value); on failure the value stays as it was.
        if let Ok(copy) = HeaderValue::from_maybe_shared(own) {
            *value = copy;
        }
    }
}

/// The XFCC value for one peer: `By=<own>;Hash=<sha256>;URI=<peer>`.
pub fn xfcc_value(own_id: &str, peer_leaf_sha256: &str, peer_id: &str) -> Option<HeaderValue> {
    HeaderValue::try_from(format!("By={own_id};Hash={peer_leaf_sha256};URI={peer_id}")).ok()
}

/// Replaces any client-sent XFCC with ours (`insert` drops every value the name had).
pub fn set_xfcc(headers: &mut HeaderMap, value: HeaderValue) {
    headers.insert(XFCC, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::request_id::REQUEST_ID;

    /// Whether `inner` lies within `outer` in memory.
    fn within(inner: &[u8], outer: &[u8]) -> bool {
        let range = outer.as_ptr_range();
        range.contains(&inner.as_ptr()) || inner.as_ptr() == range.end
    }

    #[test]
    fn values_a_table_may_keep_leave_the_buffer_they_were_parsed_from() {
        // As hyper parses HTTP/1.1: every value a slice of one large read buffer.
        let buffer = bytes::Bytes::from(format!("{:<8192}", "abc\tdef/1.0 trace-7f3a"));
        let slice =
            |at: std::ops::Range<usize>| HeaderValue::from_maybe_shared(buffer.slice(at)).unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::SERVER, slice(0..11));
        h.append("x-trace", slice(12..22));
        h.append("x-trace", slice(7..11));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static(""));
        // Never in a table, so left where they are: a sensitive value, one new in every
        // message, one too large for a 4 KiB table.
        let mut secret = slice(0..3);
        secret.set_sensitive(true);
        h.insert(header::AUTHORIZATION, secret);
        h.insert(REQUEST_ID, slice(12..22));
        h.insert(header::COOKIE, slice(0..MAX_INDEXED_VALUE + 1));
        prepare_for_hpack(&mut h);
        for name in [header::AUTHORIZATION, REQUEST_ID, header::COOKIE] {
            let value = h.remove(&name).expect("still there");
            assert!(within(value.as_bytes(), &buffer), "{name} was copied");
        }
        let values: Vec<&[u8]> = h.values().map(HeaderValue::as_bytes).collect();
        assert_eq!(values, [&b"abc\tdef/1.0"[..], b"trace-7f3a", b"/1.0", b""]);
        for value in h.values() {
            assert!(
                !within(value.as_bytes(), &buffer),
                "{value:?} still in the buffer"
            );
        }
        // One block, in order: each value starts where the one before it ends.
        for pair in values.windows(2) {
            assert_eq!(pair[0].as_ptr_range().end, pair[1].as_ptr());
        }
    }

    #[test]
    fn ids_new_in_every_message_are_never_indexed() {
        let mut h = HeaderMap::new();
        for name in [
            "x-request-id",
            "traceparent",
            "x-b3-spanid",
            "x-amzn-trace-id",
        ] {
            h.insert(name, HeaderValue::from_static("4bf92f3577b34da6"));
        }
        let mut secret = HeaderValue::from_static("Bearer x");
        secret.set_sensitive(true);
        h.insert(header::AUTHORIZATION, secret);
        // Shared by every call of a trace, or of a span.
        h.insert("tracestate", HeaderValue::from_static("vendor=1"));
        h.insert("x-b3-traceid", HeaderValue::from_static("4bf92f3577b34da6"));
        h.insert(
            "x-b3-parentspanid",
            HeaderValue::from_static("00f067aa0ba902b7"),
        );
        h.insert(header::USER_AGENT, HeaderValue::from_static("curl/8"));
        prepare_for_hpack(&mut h);
        let sensitive: Vec<&str> = h
            .iter()
            .filter(|(_, value)| value.is_sensitive())
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(
            sensitive,
            [
                "x-request-id",
                "traceparent",
                "x-b3-spanid",
                "x-amzn-trace-id",
                "authorization"
            ]
        );
    }

    #[test]
    fn compacting_no_values_changes_nothing() {
        let mut h = HeaderMap::new();
        prepare_for_hpack(&mut h);
        assert!(h.is_empty());
        h.insert(header::ACCEPT, HeaderValue::from_static(""));
        prepare_for_hpack(&mut h);
        assert_eq!(h[header::ACCEPT], "");
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::TE, "gzip".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-keep"]);
    }

    #[test]
    fn proxy_credentials_never_travel_past_the_sidecar() {
        let mut h = HeaderMap::new();
        h.insert(
            header::PROXY_AUTHORIZATION,
            "Basic c2VjcmV0".parse().unwrap(),
        );
        h.insert(header::AUTHORIZATION, "Bearer end-to-end".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), [header::AUTHORIZATION]);
    }

    #[test]
    fn each_hop_by_hop_header_is_stripped_on_its_own() {
        for name in HOP_BY_HOP.iter().chain([&header::TE]) {
            let mut h = HeaderMap::new();
            h.insert(name, "x".parse().unwrap());
            h.insert("x-keep", "1".parse().unwrap());
            strip_hop_by_hop(&mut h);
            assert_eq!(h.keys().collect::<Vec<_>>(), ["x-keep"], "{name}");
        }
    }

    #[test]
    fn a_connection_header_names_a_header_that_is_also_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "upgrade, te".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-keep"]);
    }

    #[test]
    fn hop_by_hop_names_in_connection_go_whatever_their_case_and_others_stay() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Keep-Alive, X-Custom".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-custom", "1".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-keep"]);

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-keep"]);
    }

    #[test]
    fn every_connection_header_names_headers_to_strip() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, "X-One,".parse().unwrap());
        h.append(header::CONNECTION, " x-two , close".parse().unwrap());
        h.insert("x-one", "1".parse().unwrap());
        h.insert("x-two", "2".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-keep"]);
    }

    #[test]
    fn a_connection_value_that_is_not_visible_ascii_still_names_headers_to_strip() {
        let mut h = HeaderMap::new();
        // obs-text (RFC 9110 5.5): a valid value, but not a `&str` one.
        let value = HeaderValue::from_bytes(b"x-secret,\t\xe9t\xe9 , X-Other").unwrap();
        h.insert(header::CONNECTION, value);
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("x-other", "1".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-keep"]);
    }

    #[test]
    fn te_is_one_trailers_when_any_value_lists_it_and_gone_otherwise() {
        let cases: [(&[&str], Option<&str>); 6] = [
            (&["trailers"], Some("trailers")),
            (&["trailers", "gzip"], Some("trailers")),
            (&["gzip", "trailers"], Some("trailers")),
            (&["gzip;q=0.5, Trailers"], Some("trailers")),
            (&["gzip", "deflate"], None),
            (&["trailersx"], None),
        ];
        for (values, expected) in cases {
            let mut h = HeaderMap::new();
            for value in values {
                h.append(header::TE, value.parse().unwrap());
            }
            strip_hop_by_hop(&mut h);
            let left: Vec<_> = h.get_all(header::TE).iter().collect();
            assert_eq!(left, expected.into_iter().collect::<Vec<_>>(), "{values:?}");
        }
    }

    #[test]
    fn a_request_keeps_its_upgrade_and_loses_its_other_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Upgrade, x-secret".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        strip_request_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");

        // `Upgrade` without `Connection: upgrade` asks for nothing.
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        strip_request_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn only_a_websocket_upgrade_is_kept() {
        for (protocols, kept) in [
            ("websocket", true),
            ("WebSocket", true),
            ("h2c", false),
            ("websocket, h2c", false),
            ("TLS/1.2", false),
            ("", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                header::CONNECTION,
                "Upgrade, HTTP2-Settings".parse().unwrap(),
            );
            h.insert(header::UPGRADE, protocols.parse().unwrap());
            h.insert("http2-settings", "AAMAAABkAAQAAP__".parse().unwrap());
            strip_request_hop_by_hop(&mut h);
            assert_eq!(upgrade_protocol(&h).is_some(), kept, "{protocols:?}: {h:?}");
            assert_eq!(
                h.contains_key(header::UPGRADE),
                kept,
                "{protocols:?}: {h:?}"
            );
            assert!(!h.contains_key("http2-settings"), "{protocols:?}: {h:?}");
        }
    }

    #[test]
    fn the_host_is_the_targets_authority_when_it_has_one() {
        use Version as V;
        /// Version, target, Host headers received, Host left and authority returned.
        type Case = (
            Version,
            &'static str,
            &'static [&'static str],
            Result<(&'static [&'static str], Option<&'static str>), BadHost>,
        );
        let cases: [Case; 22] = [
            (V::HTTP_11, "/x", &["api"], Ok((&["api"], Some("api")))),
            (
                V::HTTP_11,
                "/x",
                &["api:8080"],
                Ok((&["api:8080"], Some("api:8080"))),
            ),
            (
                V::HTTP_11,
                "/x",
                &["[::1]"],
                Ok((&["[::1]"], Some("[::1]"))),
            ),
            (
                V::HTTP_11,
                "/x",
                &["[::1]:80"],
                Ok((&["[::1]:80"], Some("[::1]:80"))),
            ),
            (V::HTTP_11, "/x", &[""], Ok((&[""], None))),
            // RFC 9112 3.2: HTTP/1.1 requires one; HTTP/1.0 and HTTP/2 do not.
            (V::HTTP_11, "/x", &[], Err(BadHost::Missing)),
            (V::HTTP_10, "/x", &[], Ok((&[], None))),
            (V::HTTP_2, "/x", &[], Ok((&[], None))),
            (V::HTTP_11, "/x", &["a", "b"], Err(BadHost::Several)),
            (V::HTTP_11, "/x", &["user@api"], Err(BadHost::Invalid)),
            (V::HTTP_11, "/x", &["api/admin"], Err(BadHost::Invalid)),
            (V::HTTP_11, "/x", &["api:http"], Err(BadHost::Invalid)),
            (V::HTTP_11, "/x", &["api:+80"], Err(BadHost::Invalid)),
            (V::HTTP_11, "/x", &["a b"], Err(BadHost::Invalid)),
            (
                V::HTTP_11,
                "https://admin.example/x",
                &[],
                Ok((&["admin.example"], Some("admin.example"))),
            ),
            (
                V::HTTP_11,
                "https://admin.example/x",
                &["public"],
                Ok((&["admin.example"], Some("admin.example"))),
            ),
            (
                V::HTTP_2,
                "https://admin.example:8443/x",
                &["admin.example:8443"],
                Ok((&["admin.example:8443"], Some("admin.example:8443"))),
            ),
            (
                V::HTTP_11,
                "https://user:pw@admin.example/x",
                &[],
                Ok((&["admin.example"], Some("admin.example"))),
            ),
            (
                V::HTTP_2,
                "https://admin.example/x",
                &["a", "a"],
                Err(BadHost::Several),
            ),
            (V::HTTP_10, "/x", &["api", "api"], Err(BadHost::Several)),
            (
                V::HTTP_2,
                "https://admin.example:http/x",
                &[],
                Err(BadHost::Invalid),
            ),
            (
                V::HTTP_11,
                "https://u@admin.example:x/x",
                &[],
                Err(BadHost::Invalid),
            ),
        ];
        for (version, target, received, expected) in cases {
            let uri: Uri = target.parse().unwrap();
            let mut h = HeaderMap::new();
            for host in received {
                h.append(header::HOST, host.parse().unwrap());
            }
            let settled = settle_host(version, &uri, &mut h);
            let left: Vec<_> = h.get_all(header::HOST).iter().collect();
            let context = format!("{version:?} {target} {received:?}");
            match expected {
                Ok((expected_left, expected_authority)) => {
                    let authority = settled.unwrap_or_else(|e| panic!("{context}: {e}"));
                    assert_eq!(left, expected_left, "{context}");
                    assert_eq!(
                        authority.as_ref().map(Authority::as_str),
                        expected_authority,
                        "{context}"
                    );
                }
                Err(expected) => assert_eq!(settled, Err(expected), "{context}"),
            }
        }
    }

    #[test]
    fn end_to_end_headers_pass_untouched() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "api".parse().unwrap());
        // End to end (RFC 9110 6.6.2), and HTTP/1.1 sends only the trailers it declares.
        h.insert(header::TRAILER, "x-checksum".parse().unwrap());
        h.append("x-many", "1".parse().unwrap());
        h.append("x-many", "2".parse().unwrap());
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn keeps_te_trailers() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, "trailers".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.contains_key(header::TE));
    }

    #[test]
    fn replaces_client_xfcc() {
        let mut h = HeaderMap::new();
        h.append(XFCC, "URI=spiffe://evil/x".parse().unwrap());
        h.append(XFCC, "URI=spiffe://evil/y".parse().unwrap());
        set_xfcc(
            &mut h,
            xfcc_value("spiffe://td/a", "ab12", "spiffe://td/b").unwrap(),
        );
        let all: Vec<_> = h.get_all(XFCC).iter().collect();
        assert_eq!(all, ["By=spiffe://td/a;Hash=ab12;URI=spiffe://td/b"]);
    }
}
