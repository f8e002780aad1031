//! Per-listener limits: the `limits` table as written, and what each listener gets.
//!
//! Each key is optional and bounded ([`super::bounds`]). A key a listener would never use
//! (`max_header_bytes` and `max_concurrent_streams` on a TCP listener, which reads no HTTP)
//! is refused where it is written ([`ListenerKind`]), as `timeouts` keys are, never
//! silently ignored.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::bounds::{self, Seconds};
use super::kind::ListenerKind;
use super::{FileError, SourceFile};

/// A listener's limits, each its key's value or the default.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open client connections at once; more are accepted and closed at once (default
    /// 10,000; 1 to 2^20).
    pub max_connections: usize,
    /// Bytes of request headers (default 64 KiB; HTTP/1.1 at least 8 KiB; 1 KiB to 8 MiB;
    /// HTTP listeners).
    pub max_header_bytes: usize,
    /// Concurrent HTTP/2 streams per connection (default 256; 1 to 2^31 - 1; HTTP
    /// listeners).
    pub max_concurrent_streams: u32,
    /// Close (gracefully) any connection older than this (default: no limit; more than
    /// zero, at most 365 days).
    pub max_connection_age: Option<Seconds>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            max_concurrent_streams: 256,
            max_connection_age: None,
        }
    }
}

/// The `limits` table as written: each key optional, checked against its bounds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    #[serde(deserialize_with = "max_connections")]
    max_connections: Option<Spanned<usize>>,
    #[serde(deserialize_with = "max_header_bytes")]
    max_header_bytes: Option<Spanned<usize>>,
    #[serde(deserialize_with = "max_concurrent_streams")]
    max_concurrent_streams: Option<Spanned<u32>>,
    #[serde(deserialize_with = "max_connection_age")]
    max_connection_age: Option<Spanned<Seconds>>,
}

/// A key as written (`R`), with where it was written, once `check` accepts it.
fn checked<'de, D, R, T>(
    d: D,
    check: fn(R) -> Result<T, String>,
) -> Result<Option<Spanned<T>>, D::Error>
where
    D: Deserializer<'de>,
    R: Deserialize<'de>,
{
    let written = Spanned::<R>::deserialize(d)?;
    let span = written.span();
    match check(written.into_inner()) {
        Ok(value) => Ok(Some(Spanned::new(span, value))),
        Err(error) => Err(D::Error::custom(error)),
    }
}

fn max_connections<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Spanned<usize>>, D::Error> {
    checked(d, bounds::max_connections)
}

fn max_header_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Spanned<usize>>, D::Error> {
    checked(d, bounds::max_header_bytes)
}

fn max_concurrent_streams<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Spanned<u32>>, D::Error> {
    checked(d, bounds::max_concurrent_streams)
}

fn max_connection_age<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Spanned<Seconds>>, D::Error> {
    checked(d, bounds::max_connection_age)
}

impl RawLimits {
    /// The limits of listener `field` (`inbound[0]`) of `kind`; a key it would not use is
    /// refused at its line.
    pub(super) fn check(
        &self,
        source: &SourceFile,
        field: &str,
        kind: ListenerKind,
    ) -> Result<Limits, FileError> {
        let keys = kind.keys(source, field);
        let defaults = Limits::default();
        Ok(Limits {
            max_connections: keys
                .written("limits.max_connections", &self.max_connections)?
                .unwrap_or(defaults.max_connections),
            max_header_bytes: keys
                .written("limits.max_header_bytes", &self.max_header_bytes)?
                .unwrap_or(defaults.max_header_bytes),
            max_concurrent_streams: keys
                .written(
                    "limits.max_concurrent_streams",
                    &self.max_concurrent_streams,
                )?
                .unwrap_or(defaults.max_concurrent_streams),
            max_connection_age: keys
                .written("limits.max_connection_age", &self.max_connection_age)?,
        })
    }
}
