//! Sidecar configuration: the TOML model, loading, and the checks that need more than one value.
//!
//! Everything a listener needs is checked here, before anything binds: a config that
//! loads is one the sidecar can run. This room never opens sockets.

mod bounds;
mod check;
mod kind;
mod limits;
mod model;
mod source;
#[cfg(test)]
mod tests;
mod timeouts;

pub use bounds::{
    Seconds, MAX_CONCURRENT_STREAMS, MAX_CONNECTIONS, MAX_DURATION, MAX_HEADER_BYTES, MAX_WORKERS,
    MIN_HEADER_BYTES,
};
pub use limits::Limits;
pub use model::{
    AdminConfig, IdentitySourceKind, LogConfig, LogFormat, Protocol, RuntimeConfig, Target,
    Upstream,
};
pub use source::{FileError, SourceFile};
pub use timeouts::{Timeouts, TCP_IDLE};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::policy::Policy;
use crate::spiffe_id::SpiffeId;
use check::{check_identity, check_inbound, check_outbound, Names};
use model::RawConfig;

/// Where the config comes from when `--config` is not given.
pub const DEFAULT_PATH: &str = "config/idgate.toml";

/// A loaded and checked config.
#[derive(Debug)]
pub struct Config {
    /// The config file (or `$IDGATE_CONFIG_TOML`).
    pub path: PathBuf,
    /// Identity source.
    pub identity: IdentityConfig,
    /// Inbound listeners.
    pub inbound: Vec<Inbound>,
    /// Outbound listeners.
    pub outbound: Vec<Outbound>,
    /// Admin endpoint.
    pub admin: AdminConfig,
    /// Logging.
    pub log: LogConfig,
    /// Threads.
    pub runtime: RuntimeConfig,
}

/// The checked identity source.
#[derive(Debug, Clone)]
pub enum IdentityConfig {
    /// PEM files (paths resolved against the config file's directory).
    Files {
        /// Chain, leaf first.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
        /// Our trust domain's bundle.
        bundle: PathBuf,
        /// `(trust domain, bundle file)` for federated trust domains.
        federation: Vec<(String, PathBuf)>,
    },
    /// The SPIRE agent's Workload API.
    Spire {
        /// `unix:///path` or `tcp://ip:port`.
        socket: String,
        /// Which SVID to pick when the agent offers several.
        spiffe_id: Option<SpiffeId>,
        /// Not ready once the SVID is this close to expiry with no replacement (default 30 s).
        expiry_margin: std::time::Duration,
        /// Not ready once the agent last delivered the bundle longer ago (default 24 h).
        max_bundle_age: std::time::Duration,
    },
}

/// A checked inbound listener with its compiled policy.
#[derive(Debug)]
pub struct Inbound {
    /// Listener name.
    pub name: String,
    /// Listen address.
    pub listen: SocketAddr,
    /// Upstream app.
    pub upstream: Upstream,
    /// Protocol.
    pub protocol: Protocol,
    /// Policy file path (resolved).
    pub policy_path: PathBuf,
    /// The compiled policy.
    pub policy: Arc<Policy>,
    /// Clients may resume TLS sessions.
    pub session_resumption: bool,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Limits.
    pub limits: Limits,
}

/// A checked outbound listener.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Listener name.
    pub name: String,
    /// Listen address.
    pub listen: SocketAddr,
    /// Peer sidecar.
    pub target: Target,
    /// Accepted server identities.
    pub server_ids: Vec<SpiffeId>,
    /// Protocol.
    pub protocol: Protocol,
    /// Resume TLS sessions the server offers.
    pub session_resumption: bool,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Limits.
    pub limits: Limits,
}

impl Config {
    /// Loads a config the way `idgate run` does: `explicit` path, else `$IDGATE_CONFIG_TOML`
    /// (the TOML itself), else `$IDGATE_CONFIG`, else [`DEFAULT_PATH`].
    pub fn load_default(explicit: Option<&Path>) -> Result<Self, FileError> {
        if let Some(path) = explicit {
            return Self::load(path);
        }
        if let Ok(text) = std::env::var("IDGATE_CONFIG_TOML") {
            return Self::from_source(&SourceFile {
                path: "$IDGATE_CONFIG_TOML".into(),
                text,
            });
        }
        let path =
            std::env::var_os("IDGATE_CONFIG").map_or_else(|| DEFAULT_PATH.into(), PathBuf::from);
        Self::load(&path)
    }

    /// Reads and checks a config file and every policy it names.
    pub fn load(path: &Path) -> Result<Self, FileError> {
        Self::from_source(&SourceFile::read(path)?)
    }

    /// Checks an already read config file.
    pub fn from_source(source: &SourceFile) -> Result<Self, FileError> {
        let raw: RawConfig = source.parse()?;
        if raw.inbound.is_empty() && raw.outbound.is_empty() {
            return Err(FileError {
                field: Some("inbound".into()),
                ..FileError::file(
                    &source.path,
                    "at least one [[inbound]] or [[outbound]] listener is needed",
                )
            });
        }
        let identity = check_identity(source, &raw.identity)?;
        let mut names = Names::with_admin(raw.admin.listen);
        let inbound = raw
            .inbound
            .iter()
            .enumerate()
            .map(|(i, listener)| check_inbound(source, i, listener, &mut names))
            .collect::<Result<_, _>>()?;
        let outbound = raw
            .outbound
            .iter()
            .enumerate()
            .map(|(i, listener)| check_outbound(source, i, listener, &mut names))
            .collect::<Result<_, _>>()?;
        let mut log = raw.log;
        if !matches!(log.decisions.get_ref().as_str(), "stderr" | "stdout") {
            let path = source.resolve(Path::new(log.decisions.get_ref()));
            let refuse = |why: &str| source.error_at(log.decisions.span(), "log.decisions", why);
            if log.decisions.get_ref().is_empty() {
                return Err(refuse("empty: write \"stderr\", \"stdout\" or a file path"));
            }
            if !path.parent().is_some_and(Path::is_dir) {
                return Err(refuse(&format!(
                    "{}: its directory does not exist",
                    path.display()
                )));
            }
            log.decisions =
                toml::Spanned::new(log.decisions.span(), path.to_string_lossy().into_owned());
        }
        Ok(Self {
            path: source.path.clone(),
            identity,
            inbound,
            outbound,
            admin: raw.admin,
            log,
            runtime: raw.runtime,
        })
    }

    /// The longest drain timeout of any listener.
    pub fn drain_timeout(&self) -> std::time::Duration {
        let inbound = self.inbound.iter().map(|l| l.timeouts.drain.0);
        let outbound = self.outbound.iter().map(|l| l.timeouts.drain.0);
        inbound.chain(outbound).max().unwrap_or_default()
    }
}
