//! Request IDs: every request carries an `x-request-id` (the client's, or a fresh one),
//! and idgate keeps a copy for the request's decision line and any refusal it answers.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Request correlation header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest ID kept from a client; a longer one is replaced.
const MAX_KEPT: usize = 128;

/// IDs up to this length (every ID idgate makes, UUIDs) are copied inline.
const INLINE: usize = 48;

/// A request's ID, kept beside the request while the request itself goes upstream.
/// Copying a short ID costs no allocation, where cloning the header value can (a value
/// decoded from HTTP/2 or made here owns its bytes, and its first clone allocates a
/// shared block for them).
#[derive(Debug)]
pub struct RequestId(Kept);

#[derive(Debug)]
enum Kept {
    /// A short ID, copied.
    Inline { len: u8, bytes: [u8; INLINE] },
    /// A longer one, shared with the header.
    Shared(HeaderValue),
}

impl RequestId {
    /// The ID `value` holds.
    fn of(value: &HeaderValue) -> Self {
        let text = value.as_bytes();
        if text.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..text.len()].copy_from_slice(text);
            // Fits: INLINE is below 256.
            Self(Kept::Inline {
                len: text.len() as u8,
                bytes,
            })
        } else {
            Self(Kept::Shared(value.clone()))
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Kept::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Kept::Shared(value) => value.as_bytes(),
        }
    }

    /// The ID as text for logs (UTF-8: [`ensure_request_id`] replaces any other).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The ID as a header value again, for a response idgate answers itself.
    pub fn to_header_value(&self) -> HeaderValue {
        match &self.0 {
            // The bytes came from a header value, so they make one.
            Kept::Inline { .. } => HeaderValue::from_bytes(self.as_bytes())
                .unwrap_or_else(|_| HeaderValue::from_static("")),
            Kept::Shared(value) => value.clone(),
        }
    }
}

/// Returns the request's `x-request-id`, adding a fresh one when it has none (or one
/// that is empty, longer than [`MAX_KEPT`], or not UTF-8: the decision log could not
/// name it, and the request would be lost to correlation).
pub fn ensure_request_id(headers: &mut HeaderMap) -> RequestId {
    if let Some(id) = headers.get(REQUEST_ID) {
        if !id.is_empty() && id.len() <= MAX_KEPT && std::str::from_utf8(id.as_bytes()).is_ok() {
            return RequestId::of(id);
        }
    }
    let id = new_request_id();
    let kept = RequestId::of(&id);
    headers.insert(REQUEST_ID, id);
    kept
}

fn new_request_id() -> HeaderValue {
    static SEED: OnceLock<u64> = OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 32)
    });
    let n = next_request_number();
    // `{seed:016x}-{n:012x}`, written without `format!` (this runs on every request).
    let mut id = [b'-'; 29];
    write_hex(&mut id[..16], seed);
    write_hex(&mut id[17..], n);
    HeaderValue::from_bytes(&id).expect("hex is a valid header value")
}

/// A number no other request of this process got. Each thread takes a block of
/// [`NUMBER_BLOCK`] numbers at a time from one shared counter and counts through it on
/// its own, so workers do not share the counter's cache line on every request.
fn next_request_number() -> u64 {
    static TAKEN: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        /// The next number of this thread's block, and the end of the block.
        static BLOCK: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }
    BLOCK.with(|block| {
        let (mut next, mut end) = block.get();
        if next == end {
            next = TAKEN.fetch_add(NUMBER_BLOCK, Ordering::Relaxed);
            end = next + NUMBER_BLOCK;
        }
        block.set((next + 1, end));
        next
    })
}

/// Request numbers a thread takes at a time.
const NUMBER_BLOCK: u64 = 1 << 16;

/// Writes the low `dst.len()` hex digits of `value` into `dst`, most significant first.
fn write_hex(dst: &mut [u8], mut value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in dst.iter_mut().rev() {
        *byte = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_or_creates_request_ids() {
        let mut h = HeaderMap::new();
        let a = ensure_request_id(&mut h);
        assert_eq!(h.get(REQUEST_ID).unwrap(), a.as_str());
        assert!(matches!(a.0, Kept::Inline { .. }));
        let mut h2 = HeaderMap::new();
        let b = ensure_request_id(&mut h2);
        assert_ne!(a.as_str(), b.as_str());
        h2.insert(REQUEST_ID, "given".parse().unwrap());
        assert_eq!(ensure_request_id(&mut h2).as_str(), "given");
        // 16 hex digits of process seed, a dash, 12 hex digits of a counter.
        let (a, b) = (a.as_str(), b.as_str());
        assert_eq!(a.len(), 29, "{a}");
        assert_eq!(&a[16..17], "-");
        assert_eq!(a[..16], b[..16]);
        let counter = |id: &str| u64::from_str_radix(&id[17..], 16).unwrap();
        assert!(counter(b) > counter(a));
    }

    #[test]
    fn long_or_empty_ids_are_replaced_and_kept_ones_come_back_whole() {
        let id_of = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(REQUEST_ID, value.parse().unwrap());
            let kept = ensure_request_id(&mut h);
            assert_eq!(h.get(REQUEST_ID).unwrap(), kept.as_str());
            assert_eq!(kept.to_header_value(), h.get(REQUEST_ID).unwrap());
            kept
        };
        let inline = "i".repeat(INLINE);
        assert!(matches!(id_of(&inline).0, Kept::Inline { .. }));
        assert_eq!(id_of(&inline).as_str(), inline);
        let longer = "s".repeat(INLINE + 1);
        assert!(matches!(id_of(&longer).0, Kept::Shared(_)));
        assert_eq!(id_of(&longer).as_str(), longer);
        let longest = "l".repeat(MAX_KEPT);
        assert_eq!(id_of(&longest).as_str(), longest);
        for replaced in ["".to_string(), "x".repeat(MAX_KEPT + 1)] {
            let fresh = id_of(&replaced);
            assert_eq!(fresh.as_str().len(), 29, "{replaced:?} -> {fresh:?}");
        }
    }

    #[test]
    fn ids_that_are_not_utf8_are_replaced() {
        for sent in [&b"\xff\xfe"[..], b"caf\xe9"] {
            let mut h = HeaderMap::new();
            h.insert(REQUEST_ID, HeaderValue::from_bytes(sent).unwrap());
            let fresh = ensure_request_id(&mut h);
            assert_eq!(fresh.as_str().len(), 29, "{fresh:?}");
            assert_eq!(h.get(REQUEST_ID).unwrap(), fresh.as_str());
        }
    }

    #[test]
    fn utf8_ids_beyond_ascii_come_back_byte_for_byte_and_log_as_utf8() {
        let sent = b"caf\xc3\xa9";
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_bytes(sent).unwrap());
        let kept = ensure_request_id(&mut h);
        assert_eq!(kept.as_str(), "caf\u{e9}");
        assert_eq!(kept.to_header_value().as_bytes(), sent);
    }

    #[test]
    fn request_ids_are_unique_across_threads_and_number_blocks() {
        let per_thread = NUMBER_BLOCK as usize + 10;
        let ids: Vec<HeaderValue> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..3)
                .map(|_| {
                    scope.spawn(|| {
                        (0..per_thread)
                            .map(|_| new_request_id())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect::<Vec<HeaderValue>>()
        });
        let unique: std::collections::HashSet<&HeaderValue> = ids.iter().collect();
        assert_eq!(unique.len(), 3 * per_thread);
    }

    #[test]
    fn hex_is_fixed_width_and_keeps_the_low_digits() {
        let mut out = [0u8; 12];
        write_hex(&mut out, 0xabc);
        assert_eq!(&out, b"000000000abc");
        let mut out = [0u8; 4];
        write_hex(&mut out, 0x1234_5678);
        assert_eq!(&out, b"5678");
    }
}
