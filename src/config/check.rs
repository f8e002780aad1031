//! Checks that need more than one value or a look at the disk: identity sources, listener
//! names and addresses, files that must be readable, policies that must compile.
//!
//! Every error names file, line and field: the line of the key at fault, or of its table
//! when the key is missing. Nothing here opens a socket.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use toml::Spanned;

use super::kind::ListenerKind;
use super::model::{InboundConfig, OutboundConfig, RawIdentity};
use super::{
    FileError, IdentityConfig, IdentitySourceKind, Inbound, Outbound, Protocol, SourceFile,
    Upstream,
};
use crate::identity::{files, IdentityError, DEFAULT_EXPIRY_MARGIN, DEFAULT_MAX_BUNDLE_AGE};
use crate::policy::Policy;
use crate::spiffe_id::TrustDomain;

/// Listener names and addresses seen so far, to refuse duplicates.
pub(super) struct Names {
    names: HashSet<String>,
    /// Each address bound so far, and what binds it.
    addrs: Vec<(SocketAddr, String)>,
}

/// Whether binding both would fail: the same port, and the same address or a wildcard
/// covering the other (`0.0.0.0` every IPv4 address; `[::]`, dual-stack, every address).
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |wide: SocketAddr, other: SocketAddr| match wide.ip() {
        IpAddr::V6(ip) => ip.is_unspecified(),
        IpAddr::V4(ip) => ip.is_unspecified() && other.is_ipv4(),
    };
    a.port() == b.port() && a.port() != 0 && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

impl Names {
    /// Names the admin listener's address, which no other listener may overlap.
    pub(super) fn with_admin(admin: SocketAddr) -> Self {
        Self {
            names: HashSet::new(),
            addrs: vec![(admin, "the admin listener ([admin] listen)".into())],
        }
    }

    fn claim(
        &mut self,
        source: &SourceFile,
        listener: &impl Listener,
        field: &str,
    ) -> Result<(), FileError> {
        let (name, listen) = (listener.name(), listener.listen());
        if !self.names.insert(name.get_ref().clone()) {
            return Err(source.error_at(
                name.span(),
                &format!("{field}.name"),
                format!("duplicate listener name {:?}", name.get_ref()),
            ));
        }
        let addr = *listen.get_ref();
        if let Some((other, owner)) = self.addrs.iter().find(|(other, _)| overlap(addr, *other)) {
            return Err(source.error_at(
                listen.span(),
                &format!("{field}.listen"),
                format!("{addr} is used by another listener: {owner} listens on {other}"),
            ));
        }
        self.addrs.push((addr, field.to_owned()));
        Ok(())
    }
}

trait Listener {
    fn name(&self) -> &Spanned<String>;
    fn listen(&self) -> &Spanned<SocketAddr>;
}

impl Listener for InboundConfig {
    fn name(&self) -> &Spanned<String> {
        &self.name
    }
    fn listen(&self) -> &Spanned<SocketAddr> {
        &self.listen
    }
}

impl Listener for OutboundConfig {
    fn name(&self) -> &Spanned<String> {
        &self.name
    }
    fn listen(&self) -> &Spanned<SocketAddr> {
        &self.listen
    }
}

pub(super) fn check_identity(
    source: &SourceFile,
    raw: &Spanned<RawIdentity>,
) -> Result<IdentityConfig, FileError> {
    let span = raw.span();
    let raw = raw.get_ref();
    let refuse = |field: &str, message: &str| {
        source.error_at(span.clone(), &format!("identity.{field}"), message)
    };
    match raw.source {
        IdentitySourceKind::Files => {
            if let Some(s) = &raw.socket {
                return Err(source.error_at(
                    s.span(),
                    "identity.socket",
                    "only for source = \"spire\"",
                ));
            }
            if let Some(s) = &raw.spiffe_id {
                return Err(source.error_at(
                    s.span(),
                    "identity.spiffe_id",
                    "only for source = \"spire\"",
                ));
            }
            for (value, field) in [
                (&raw.expiry_margin, "expiry_margin"),
                (&raw.max_bundle_age, "max_bundle_age"),
            ] {
                if let Some(v) = value {
                    return Err(source.error_at(
                        v.span(),
                        &format!("identity.{field}"),
                        "only for source = \"spire\"",
                    ));
                }
            }
            let file = |value: &Option<Spanned<PathBuf>>, field: &str| match value {
                Some(path) => readable_file(source, path, &format!("identity.{field}")),
                None => Err(refuse(field, "required when source = \"files\"")),
            };
            let federation = raw
                .federation
                .iter()
                .flat_map(|f| f.get_ref())
                .map(|(td, path)| {
                    let field = format!("identity.federation.{td}");
                    TrustDomain::new(td)
                        .map_err(|e| source.error_at(path.span(), &field, e.to_string()))?;
                    Ok((td.clone(), readable_file(source, path, &field)?))
                })
                .collect::<Result<_, FileError>>()?;
            let identity = IdentityConfig::Files {
                cert: file(&raw.cert, "cert")?,
                key: file(&raw.key, "key")?,
                bundle: file(&raw.bundle, "bundle")?,
                federation,
            };
            files_identity_loads(source, raw, span.clone(), &identity)?;
            Ok(identity)
        }
        IdentitySourceKind::Spire => {
            for (value, field) in [
                (&raw.cert, "cert"),
                (&raw.key, "key"),
                (&raw.bundle, "bundle"),
            ] {
                if let Some(v) = value {
                    return Err(source.error_at(
                        v.span(),
                        &format!("identity.{field}"),
                        "only for source = \"files\"",
                    ));
                }
            }
            if let Some(f) = &raw.federation {
                return Err(source.error_at(
                    f.span(),
                    "identity.federation",
                    "only for source = \"files\" (the agent sends federated bundles)",
                ));
            }
            let socket = match &raw.socket {
                Some(s) => check_socket(s.get_ref())
                    .map_err(|e| source.error_at(s.span(), "identity.socket", e))?,
                None => {
                    let from_env = std::env::var("SPIFFE_ENDPOINT_SOCKET").map_err(|_| {
                        refuse("socket", "not set, and $SPIFFE_ENDPOINT_SOCKET is empty")
                    })?;
                    check_socket(&from_env)
                        .map_err(|e| refuse("socket", &format!("$SPIFFE_ENDPOINT_SOCKET: {e}")))?
                }
            };
            if let Some(id) = raw
                .spiffe_id
                .as_ref()
                .filter(|id| id.get_ref().path().is_empty())
            {
                return Err(source.error_at(
                    id.span(),
                    "identity.spiffe_id",
                    format!(
                        "{} names a trust domain; an SVID's ID has a path",
                        id.get_ref()
                    ),
                ));
            }
            Ok(IdentityConfig::Spire {
                socket,
                spiffe_id: raw.spiffe_id.as_ref().map(|id| id.get_ref().clone()),
                expiry_margin: raw
                    .expiry_margin
                    .as_ref()
                    .map_or(DEFAULT_EXPIRY_MARGIN, |d| d.get_ref().0),
                max_bundle_age: raw
                    .max_bundle_age
                    .as_ref()
                    .map_or(DEFAULT_MAX_BUNDLE_AGE, |d| d.get_ref().0),
            })
        }
    }
}

fn check_socket(socket: &str) -> Result<String, String> {
    match socket.split_once("://") {
        Some(("unix", path)) if path.starts_with('/') => Ok(socket.to_string()),
        Some(("tcp", addr)) if addr.parse::<SocketAddr>().is_ok() => Ok(socket.to_string()),
        _ => Err(format!(
            "expected unix:///path or tcp://ip:port, got {socket:?}"
        )),
    }
}

/// Loads a `files` identity as `run` does, so files that exist but hold no usable
/// certificate, key or bundle are refused at the key that names the file at fault.
fn files_identity_loads(
    source: &SourceFile,
    raw: &RawIdentity,
    table: Range<usize>,
    identity: &IdentityConfig,
) -> Result<(), FileError> {
    let IdentityConfig::Files {
        cert,
        key,
        bundle,
        federation,
    } = identity
    else {
        return Ok(());
    };
    let Err(error) = files::load(cert, key, bundle, federation) else {
        return Ok(());
    };
    let (at_fault, key_error) = match &error {
        IdentityError::File { path, .. } => (Some(path), false),
        IdentityError::InFile { path, error } => (
            Some(path),
            matches!(
                **error,
                IdentityError::BadKey(_) | IdentityError::KeyMismatch
            ),
        ),
        _ => (None, false),
    };
    // Where each file is named; the key first for a key error (cert and key may be one file).
    let (cert_key, key_cert) = ((&raw.cert, "cert"), (&raw.key, "key"));
    let (first, second) = if key_error {
        (key_cert, cert_key)
    } else {
        (cert_key, key_cert)
    };
    let mut keys: Vec<(&Spanned<PathBuf>, String)> = Vec::new();
    for (value, name) in [first, second, (&raw.bundle, "bundle")] {
        keys.extend(value.iter().map(|v| (v, format!("identity.{name}"))));
    }
    for (td, path) in raw.federation.iter().flat_map(|f| f.get_ref()) {
        keys.push((path, format!("identity.federation.{td}")));
    }
    let named = keys
        .into_iter()
        .find(|(value, _)| at_fault.is_some_and(|p| *p == source.resolve(value.get_ref())));
    Err(match named {
        Some((value, field)) => source.error_at(value.span(), &field, error.to_string()),
        None => source.error_at(table, "identity", error.to_string()),
    })
}

fn readable_file(
    source: &SourceFile,
    path: &Spanned<PathBuf>,
    field: &str,
) -> Result<PathBuf, FileError> {
    let resolved = source.resolve(path.get_ref());
    std::fs::File::open(&resolved).map_err(|e| {
        source.error_at(
            path.span(),
            field,
            format!("cannot read {}: {e}", resolved.display()),
        )
    })?;
    Ok(resolved)
}

pub(super) fn check_inbound(
    source: &SourceFile,
    index: usize,
    listener: &Spanned<InboundConfig>,
    names: &mut Names,
) -> Result<Inbound, FileError> {
    let field = format!("inbound[{index}]");
    let l = listener.get_ref();
    names.claim(source, l, &field)?;
    let upstream_fits = match (l.upstream.get_ref(), l.protocol) {
        (Upstream::Unix(_), _) => true,
        (Upstream::Tcp { scheme, .. }, Protocol::Http) => *scheme == "http",
        (Upstream::Tcp { scheme, .. }, Protocol::Tcp) => *scheme == "tcp",
    };
    if !upstream_fits {
        let expected = match l.protocol {
            Protocol::Http => "expected http://host:port or unix:///path",
            Protocol::Tcp => "expected tcp://host:port or unix:///path for protocol = \"tcp\"",
        };
        return Err(source.error_at(l.upstream.span(), &format!("{field}.upstream"), expected));
    }
    let kind = ListenerKind {
        inbound: true,
        protocol: l.protocol,
    };
    let timeouts = l.timeouts.check(source, &field, kind)?;
    let limits = l.limits.check(source, &field, kind)?;
    let policy_path = readable_file(source, &l.policy, &format!("{field}.policy"))?;
    let policy = Policy::load(&policy_path)?;
    if l.protocol == Protocol::Tcp {
        policy.check_tcp_only()?;
    }
    Ok(Inbound {
        name: l.name.get_ref().clone(),
        listen: *l.listen.get_ref(),
        upstream: l.upstream.get_ref().clone(),
        protocol: l.protocol,
        policy_path,
        policy: Arc::new(policy),
        session_resumption: l.session_resumption,
        timeouts,
        limits,
    })
}

pub(super) fn check_outbound(
    source: &SourceFile,
    index: usize,
    listener: &Spanned<OutboundConfig>,
    names: &mut Names,
) -> Result<Outbound, FileError> {
    let field = format!("outbound[{index}]");
    let l = listener.get_ref();
    names.claim(source, l, &field)?;
    if l.server_ids.get_ref().is_empty() {
        return Err(source.error_at(
            l.server_ids.span(),
            &format!("{field}.server_ids"),
            "list at least one SPIFFE ID the server may present",
        ));
    }
    if let Some(bare) = l
        .server_ids
        .get_ref()
        .iter()
        .find(|id| id.path().is_empty())
    {
        return Err(source.error_at(
            l.server_ids.span(),
            &format!("{field}.server_ids"),
            format!("{bare} names a trust domain, which no server presents (a workload's ID has a path)"),
        ));
    }
    let kind = ListenerKind {
        inbound: false,
        protocol: l.protocol,
    };
    let timeouts = l.timeouts.check(source, &field, kind)?;
    let limits = l.limits.check(source, &field, kind)?;
    Ok(Outbound {
        name: l.name.get_ref().clone(),
        listen: *l.listen.get_ref(),
        target: l.target.clone(),
        server_ids: l.server_ids.get_ref().clone(),
        protocol: l.protocol,
        session_resumption: l.session_resumption,
        timeouts,
        limits,
    })
}
