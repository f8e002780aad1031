//! What a config value may be: durations, and the range of every number a listener or the
//! runtime takes. A value out of range is a serde error, so it names file, line and field
//! like any other, and `idgate validate` and `idgate run` refuse it before anything binds.
//!
//! The bounds exist so that a value that loads cannot overflow or panic where it is used
//! (`Instant + Duration`, tokio's semaphore, hyper's builders). Nothing here knows TOML.

use std::num::{IntErrorKind, NonZeroUsize};
use std::str::FromStr;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// The longest any duration key may be: 365 days. Each is added to the current time (a
/// deadline) somewhere, and `Instant + Duration` panics when the sum does not fit.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);
/// The most open connections a listener may allow: 2^20, Linux's default `fs.nr_open`,
/// the most files one process can ever have open (each connection holds at least one).
pub const MAX_CONNECTIONS: usize = 1 << 20;
/// The fewest request header bytes a listener may allow: 1 KiB (an HTTP/2 request's
/// pseudo-headers alone count about 200).
pub const MIN_HEADER_BYTES: usize = 1024;
/// The most request header bytes a listener may allow: 8 MiB, Envoy's ceiling.
pub const MAX_HEADER_BYTES: usize = 8 << 20;
/// The most concurrent HTTP/2 streams per connection: 2^31 - 1, Envoy's ceiling.
pub const MAX_CONCURRENT_STREAMS: u32 = (1 << 31) - 1;
/// The most worker threads `[runtime] workers` may ask for.
pub const MAX_WORKERS: usize = 1024;

/// A duration written as a number with a unit: `ms`, `s`, `m` or `h`; at most
/// [`MAX_DURATION`], so adding it to the current time never overflows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

impl FromStr for Seconds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let too_long = || format!("{s:?} is too long: at most 365 days (\"8760h\")");
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|e: std::num::ParseIntError| match e.kind() {
                IntErrorKind::PosOverflow => too_long(),
                _ => format!("expected a duration such as \"10s\" or \"500ms\", got {s:?}"),
            })?;
        let millis_per_unit = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60 * 1000,
            "h" => 3600 * 1000,
            _ => return Err(format!("unknown duration unit in {s:?}: use ms, s, m or h")),
        };
        n.checked_mul(millis_per_unit)
            .map(Duration::from_millis)
            .filter(|d| *d <= MAX_DURATION)
            .map(Self)
            .ok_or_else(too_long)
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// `max_connection_age`: zero would end every connection at once.
pub(super) fn max_connection_age(age: Seconds) -> Result<Seconds, String> {
    match age.0.is_zero() {
        true => Err("must be more than 0 (zero would end every connection at once); leave it out for no limit".into()),
        false => Ok(age),
    }
}

/// A count in `min..=max`: any other integer TOML can hold is refused with the range.
fn count_in<T: TryFrom<i64>>(n: i64, min: i64, max: i64, unit: &str) -> Result<T, String> {
    (min..=max)
        .contains(&n)
        .then(|| T::try_from(n).ok())
        .flatten()
        .ok_or_else(|| format!("expected {min} to {max}{unit}, got {n}"))
}

/// `max_connections`.
pub(super) fn max_connections(n: i64) -> Result<usize, String> {
    count_in(n, 1, MAX_CONNECTIONS as i64, " open connections")
}

/// `max_header_bytes`.
pub(super) fn max_header_bytes(n: i64) -> Result<usize, String> {
    let (min, max) = (MIN_HEADER_BYTES as i64, MAX_HEADER_BYTES as i64);
    count_in(n, min, max, " bytes (1 KiB to 8 MiB)")
}

/// `max_concurrent_streams`.
pub(super) fn max_concurrent_streams(n: i64) -> Result<u32, String> {
    count_in(n, 1, i64::from(MAX_CONCURRENT_STREAMS), " streams")
}

/// `[runtime] workers`: zero keeps serde's own message (`expected a nonzero usize`).
pub(super) fn workers<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroUsize, D::Error> {
    let n = NonZeroUsize::deserialize(d)?;
    match n.get() <= MAX_WORKERS {
        true => Ok(n),
        false => Err(D::Error::custom(format!(
            "expected 1 to {MAX_WORKERS} worker threads, got {n}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_that_overflow_are_errors_not_wrapped() {
        // 307445734561825861 * 60 wraps to 44 in a u64.
        for long in [
            "307445734561825861m",
            "5124095576030431h",
            "18446744073709551615m",
            "18446744073709551616s",
        ] {
            let err = long.parse::<Seconds>().unwrap_err();
            assert!(err.contains("at most 365 days"), "{long}: {err}");
        }
        assert_eq!(
            "8760h".parse(),
            Ok(Seconds(Duration::from_secs(365 * 86_400)))
        );
    }
}
