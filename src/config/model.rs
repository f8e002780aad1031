//! The sidecar config as written in TOML: serde types only, every table `deny_unknown_fields`.
//!
//! Values that can be checked alone (addresses, URLs, SPIFFE IDs, durations, the ranges of
//! numbers, the last two in [`super::bounds`]) are checked while deserialising, so their
//! errors carry file, line and field for free.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::bounds::{self, Seconds};
use super::limits::RawLimits;
use super::timeouts::RawTimeouts;
use crate::spiffe_id::SpiffeId;

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Where our SVID and bundles come from.
    pub identity: Spanned<RawIdentity>,
    /// mTLS listeners in front of the local app.
    #[serde(default)]
    pub inbound: Vec<Spanned<InboundConfig>>,
    /// Plain listeners for the local app, mTLS to a peer.
    #[serde(default)]
    pub outbound: Vec<Spanned<OutboundConfig>>,
    /// Admin endpoint.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Threads.
    #[serde(default)]
    pub runtime: RuntimeConfig,
}

/// Which identity source to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentitySourceKind {
    /// The SPIRE agent's Workload API.
    Spire,
    /// PEM files on disk.
    Files,
}

/// `[identity]` as written; [`super::IdentityConfig`] is the checked form.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    /// `spire` or `files`.
    pub source: IdentitySourceKind,
    /// spire: Workload API endpoint.
    pub socket: Option<Spanned<String>>,
    /// spire: which SVID to use when the agent offers several.
    pub spiffe_id: Option<Spanned<SpiffeId>>,
    /// spire: not ready once the SVID is this close to expiry with no replacement.
    pub expiry_margin: Option<Spanned<Seconds>>,
    /// spire: not ready once the agent last delivered the trust bundle longer ago than this.
    pub max_bundle_age: Option<Spanned<Seconds>>,
    /// files: certificate chain, leaf first.
    pub cert: Option<Spanned<PathBuf>>,
    /// files: private key.
    pub key: Option<Spanned<PathBuf>>,
    /// files: our trust domain's bundle.
    pub bundle: Option<Spanned<PathBuf>>,
    /// files: other trust domains' bundles.
    pub federation: Option<Spanned<BTreeMap<String, Spanned<PathBuf>>>>,
}

/// Application protocol of a listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 and HTTP/2.
    #[default]
    Http,
    /// Raw TCP bytes.
    Tcp,
}

/// One `[[inbound]]` listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// Name used in logs and metrics.
    pub name: Spanned<String>,
    /// Address to accept mTLS on.
    pub listen: Spanned<SocketAddr>,
    /// The local app.
    pub upstream: Spanned<Upstream>,
    /// `http` or `tcp`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Policy file, relative to the config file.
    pub policy: Spanned<PathBuf>,
    /// Clients may resume TLS sessions (bounded tickets; see the README).
    #[serde(default = "enabled")]
    pub session_resumption: bool,
    /// Timeouts overriding the defaults.
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// Limits overriding the defaults.
    #[serde(default)]
    pub limits: RawLimits,
}

/// One `[[outbound]]` listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// Name used in logs and metrics.
    pub name: Spanned<String>,
    /// Address the local app connects to (plain).
    pub listen: Spanned<SocketAddr>,
    /// The peer sidecar, `host:port`.
    pub target: Target,
    /// SPIFFE IDs the server may present.
    pub server_ids: Spanned<Vec<SpiffeId>>,
    /// `http` or `tcp`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Resume TLS sessions the server offers (bounded; see the README).
    #[serde(default = "enabled")]
    pub session_resumption: bool,
    /// Timeouts overriding the defaults.
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// Limits overriding the defaults.
    #[serde(default)]
    pub limits: RawLimits,
}

fn enabled() -> bool {
    true
}

/// Where an inbound listener sends allowed traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// `http://host:port` (or `tcp://host:port` for TCP listeners).
    Tcp {
        scheme: &'static str,
        authority: String,
    },
    /// `unix:///path`.
    Unix(PathBuf),
}

impl FromStr for Upstream {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        const EXPECTED: &str = "expected http://host:port, tcp://host:port or unix:///path";
        if let Some(path) = s.strip_prefix("unix://") {
            return match path.starts_with('/') {
                true => Ok(Self::Unix(path.into())),
                false => Err(format!("{EXPECTED}: unix socket path must be absolute")),
            };
        }
        let (scheme, authority) = match s.split_once("://") {
            Some(("http", rest)) => ("http", rest),
            Some(("tcp", rest)) => ("tcp", rest),
            _ => return Err(format!("{EXPECTED}, got {s:?}")),
        };
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        check_host_port(authority).map_err(|e| format!("{EXPECTED}: {e}"))?;
        Ok(Self::Tcp {
            scheme,
            authority: authority.to_string(),
        })
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { scheme, authority } => write!(f, "{scheme}://{authority}"),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// An outbound target, `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or IP address.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (host, port) = check_host_port(s).map_err(|e| format!("expected host:port: {e}"))?;
        Ok(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host.contains(':') {
            true => write!(f, "[{}]:{}", self.host, self.port),
            false => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

fn check_host_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} has no port"))?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{s:?} has no valid port"))?;
    if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!("{s:?} has no valid host"));
    }
    Ok((host, port))
}

macro_rules! deserialize_from_str {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
deserialize_from_str!(Upstream, Target);

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Plain HTTP admin listener (default 127.0.0.1:15000).
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
        }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15000))
}

/// Log format for diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Diagnostics format.
    #[serde(default)]
    pub format: LogFormat,
    /// Where decision lines go: `stderr`, `stdout` or a file path.
    #[serde(default = "default_decisions")]
    pub decisions: Spanned<String>,
    /// Diagnostics filter (`RUST_LOG` syntax, default `info`); `RUST_LOG` wins when set.
    #[serde(default = "default_level", deserialize_with = "log_filter")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            decisions: default_decisions(),
            level: default_level(),
        }
    }
}

/// `[runtime]`: how many threads serve connections.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Worker threads (default 1, as a Linkerd proxy runs: one thread has no cross-thread
    /// wake-ups and costs the least CPU per request; raise it for a busy standalone proxy;
    /// at most 1,024).
    #[serde(deserialize_with = "bounds::workers")]
    pub workers: NonZeroUsize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            workers: NonZeroUsize::MIN,
        }
    }
}

fn default_decisions() -> Spanned<String> {
    Spanned::new(0..0, "stderr".into())
}

/// A `[log] level` that parses as a filter, each directive a level (`info`) or
/// `target=level`: a bare word is a target name to the filter (`debugg` would enable
/// everything of a target no code has, and silence the rest).
fn log_filter<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let level = String::deserialize(deserializer)?;
    let hint = "RUST_LOG syntax: a level (\"info\") or target=level pairs (\"idgate=debug,info\")";
    if let Some(word) = level
        .split(',')
        .map(str::trim)
        .find(|d| !d.contains('=') && !LEVELS.contains(&d.to_ascii_lowercase().as_str()))
    {
        return Err(serde::de::Error::custom(format!(
            "{word:?} is not a level; {hint}"
        )));
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(&level)
        .map_err(|e| serde::de::Error::custom(format!("{level:?}: {e}; {hint}")))?;
    Ok(level)
}

fn default_level() -> String {
    "info".into()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn parses_upstreams() {
        assert_eq!(
            "http://127.0.0.1:8080".parse(),
            Ok(Upstream::Tcp {
                scheme: "http",
                authority: "127.0.0.1:8080".into()
            })
        );
        assert_eq!(
            "unix:///run/app.sock".parse(),
            Ok(Upstream::Unix("/run/app.sock".into()))
        );
        for bad in [
            "127.0.0.1:8080",
            "https://a:1",
            "http://a",
            "http://:80",
            "unix://rel.sock",
            "http://a:0",
        ] {
            assert!(bad.parse::<Upstream>().is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_targets_and_durations() {
        let t: Target = "[::1]:8443".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 8443));
        assert_eq!(t.to_string(), "[::1]:8443");
        assert_eq!("250ms".parse(), Ok(Seconds(Duration::from_millis(250))));
        assert_eq!("2m".parse(), Ok(Seconds(Duration::from_secs(120))));
        assert!("10".parse::<Seconds>().is_err());
        assert!("s".parse::<Seconds>().is_err());
    }
}
