//! Per-listener timeouts: the `timeouts` table as written, which of its keys mean something
//! to which kind of listener, and the defaults each kind gets.
//!
//! A key a listener would never use (`handshake` on an outbound listener, `header`,
//! `response` and `body` on a TCP one) is refused where it is written ([`ListenerKind`]),
//! never silently ignored. A TCP listener's `idle` defaults to an hour, an HTTP
//! listener's to 90 s.

use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::bounds::Seconds;
use super::kind::ListenerKind;
use super::{FileError, Protocol, SourceFile};

/// How long a TCP relay may move no byte either way before it is closed, when its listener
/// sets no `idle` (Envoy's tcp_proxy default: a database pool's connections idle far longer
/// than an HTTP keep-alive connection). An HTTP listener's upgraded connections (WebSocket
/// tunnels) are bounded by its `body` timeout instead, as Envoy's stream idle timeout bounds
/// an upgraded stream.
pub const TCP_IDLE: Duration = Duration::from_secs(3600);

/// A listener's timeouts, each its key's value or the default for the listener's kind.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TLS handshake of an inbound listener (default 10 s).
    pub handshake: Seconds,
    /// Reading a request's headers, HTTP listeners (default 30 s).
    pub header: Seconds,
    /// HTTP: keep-alive connection with no request in flight (default 90 s); TCP: a relay
    /// that moves no byte either way (default [`TCP_IDLE`]).
    pub idle: Seconds,
    /// Connecting to the upstream, and outbound its mTLS handshake (default 5 s).
    pub connect: Seconds,
    /// Waiting for the upstream's response headers, HTTP listeners (default 60 s, then 504).
    pub response: Seconds,
    /// The longest a response or request body may send nothing before it is cut, and an
    /// upgraded connection (WebSocket tunnel) may carry no byte either way before it is
    /// closed, HTTP listeners (default 5 minutes, Envoy's stream idle timeout).
    pub body: Seconds,
    /// Finishing in-flight requests on SIGTERM (default 30 s; zero closes them at once);
    /// at most 5 s of it when a connection ends for its peer's sake (revocation, expiry, age).
    pub drain: Seconds,
}

impl Default for Timeouts {
    /// An HTTP listener's defaults.
    fn default() -> Self {
        let s = |secs| Seconds(Duration::from_secs(secs));
        Self {
            handshake: s(10),
            header: s(30),
            idle: s(90),
            connect: s(5),
            response: s(60),
            body: s(300),
            drain: s(30),
        }
    }
}

/// The `timeouts` table as written: each key optional, written like `"10s"` or `"500ms"`,
/// at most 365 days; all but `drain` more than zero (zero would fail every connection).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTimeouts {
    #[serde(deserialize_with = "timeout")]
    handshake: Option<Spanned<Seconds>>,
    #[serde(deserialize_with = "timeout")]
    header: Option<Spanned<Seconds>>,
    #[serde(deserialize_with = "timeout")]
    idle: Option<Spanned<Seconds>>,
    #[serde(deserialize_with = "timeout")]
    connect: Option<Spanned<Seconds>>,
    #[serde(deserialize_with = "timeout")]
    response: Option<Spanned<Seconds>>,
    #[serde(deserialize_with = "timeout")]
    body: Option<Spanned<Seconds>>,
    drain: Option<Spanned<Seconds>>,
}

/// A timeout key, when written: zero would fail every connection.
fn timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Spanned<Seconds>>, D::Error> {
    let value = Spanned::<Seconds>::deserialize(d)?;
    match value.get_ref().0.is_zero() {
        true => Err(D::Error::custom(
            "must be more than 0 (a zero timeout fails every connection)",
        )),
        false => Ok(Some(value)),
    }
}

/// The defaults of a `kind` listener.
fn defaults(kind: ListenerKind) -> Timeouts {
    let http = Timeouts::default();
    match kind.protocol {
        Protocol::Http => http,
        Protocol::Tcp => Timeouts {
            idle: Seconds(TCP_IDLE),
            ..http
        },
    }
}

impl RawTimeouts {
    /// The timeouts of listener `field` (`inbound[0]`) of `kind`; a key it would not use
    /// is refused at its line.
    pub(super) fn check(
        &self,
        source: &SourceFile,
        field: &str,
        kind: ListenerKind,
    ) -> Result<Timeouts, FileError> {
        let defaults = defaults(kind);
        let keys = kind.keys(source, field);
        let pick = |key: &str, written: &Option<Spanned<Seconds>>, default: Seconds| {
            Ok::<_, FileError>(keys.written(key, written)?.unwrap_or(default))
        };
        Ok(Timeouts {
            handshake: pick("timeouts.handshake", &self.handshake, defaults.handshake)?,
            header: pick("timeouts.header", &self.header, defaults.header)?,
            idle: pick("timeouts.idle", &self.idle, defaults.idle)?,
            connect: pick("timeouts.connect", &self.connect, defaults.connect)?,
            response: pick("timeouts.response", &self.response, defaults.response)?,
            body: pick("timeouts.body", &self.body, defaults.body)?,
            drain: pick("timeouts.drain", &self.drain, defaults.drain)?,
        })
    }
}
