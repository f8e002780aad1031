//! Pod annotations read into [`Settings`]: what the injected sidecar listens on, forwards
//! to, trusts and mounts.
//!
//! Every value here comes from a user's manifest, so each one is checked and refused with
//! the annotation's name and what to write instead; nothing in this file panics on input.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use crate::spiffe_id::SpiffeId;

use super::InjectError;

/// `idgate.io/inject`: must be `"true"` for a pod to be changed.
pub const INJECT: &str = "idgate.io/inject";
/// `idgate.io/inbound-port`: the mTLS port idgate listens on (default 8443).
pub const INBOUND_PORT: &str = "idgate.io/inbound-port";
/// `idgate.io/upstream-port`: the app's port on 127.0.0.1 (default: the first
/// `containerPort` of the first app container).
pub const UPSTREAM_PORT: &str = "idgate.io/upstream-port";
/// `idgate.io/protocol`: `http` (default) or `tcp`, for the inbound listener.
pub const PROTOCOL: &str = "idgate.io/protocol";
/// `idgate.io/policy-configmap`: ConfigMap holding `policy.toml` (default `idgate-policy`).
pub const POLICY_CONFIGMAP: &str = "idgate.io/policy-configmap";
/// `idgate.io/spiffe-socket`: `csi` (default, driver `csi.spiffe.io`) or a hostPath directory
/// holding the SPIRE agent's `spire-agent.sock`.
pub const SPIFFE_SOCKET: &str = "idgate.io/spiffe-socket";
/// `idgate.io/spiffe-id`: which SVID to use when the agent offers several (optional).
pub const SPIFFE_ID: &str = "idgate.io/spiffe-id";
/// `idgate.io/image`: the sidecar image (default [`DEFAULT_IMAGE`]).
pub const IMAGE: &str = "idgate.io/image";
/// `idgate.io/admin-port`: `/healthz`, `/readyz`, `/metrics` (default 15000).
pub const ADMIN_PORT: &str = "idgate.io/admin-port";
/// `idgate.io/outbound`: comma-separated `LOCAL_PORT=HOST:PORT@SPIFFE_ID` entries; the app
/// talks plain HTTP to `127.0.0.1:LOCAL_PORT` and idgate calls `HOST:PORT` over mTLS,
/// accepting only a server presenting `SPIFFE_ID`.
pub const OUTBOUND: &str = "idgate.io/outbound";
/// `idgate.io/workers`: `[runtime] workers`, the sidecar's threads (default 1; at most
/// [`MAX_WORKERS`]). Give the container as many CPUs as workers.
pub const WORKERS: &str = "idgate.io/workers";
/// The most worker threads `idgate.io/workers` may ask for.
pub const MAX_WORKERS: usize = 64;

/// The image injected when `idgate.io/image` is not set.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/idgate/idgate:", env!("CARGO_PKG_VERSION"));
/// The ConfigMap mounted when `idgate.io/policy-configmap` is not set.
pub const DEFAULT_POLICY_CONFIGMAP: &str = "idgate-policy";

/// Where the SPIRE agent's Workload API socket comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSource {
    /// The SPIFFE CSI driver (`csi.spiffe.io`).
    Csi,
    /// A directory on the node, mounted with `hostPath`.
    HostPath(String),
}

/// Application protocol of the inbound listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 and HTTP/2.
    Http,
    /// Raw TCP.
    Tcp,
}

/// One outbound listener asked for by `idgate.io/outbound`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundSpec {
    /// Port on 127.0.0.1 the app connects to.
    pub local_port: u16,
    /// Peer host (a Service name, usually).
    pub host: String,
    /// Peer sidecar's mTLS port.
    pub port: u16,
    /// The SPIFFE ID the peer must present.
    pub server_id: SpiffeId,
}

/// Everything the sidecar needs, read from one pod's annotations.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Sidecar image.
    pub image: String,
    /// mTLS listener port.
    pub inbound_port: u16,
    /// The app's port; `None` means no inbound listener (outbound only).
    pub upstream_port: Option<u16>,
    /// Inbound protocol.
    pub protocol: Protocol,
    /// ConfigMap with `policy.toml`.
    pub policy_configmap: String,
    /// Workload API socket source.
    pub socket: SocketSource,
    /// Optional SVID selector.
    pub spiffe_id: Option<SpiffeId>,
    /// Admin port (probes and metrics).
    pub admin_port: u16,
    /// Outbound listeners.
    pub outbound: Vec<OutboundSpec>,
    /// Threads serving connections.
    pub workers: NonZeroUsize,
}

/// Whether `annotations` ask for injection (`idgate.io/inject: "true"`).
pub fn wants_injection(annotations: &BTreeMap<String, String>) -> bool {
    annotations.get(INJECT).map(String::as_str) == Some("true")
}

impl Settings {
    /// Reads the annotations; `first_container_port` is the upstream fallback.
    pub fn from_annotations(
        annotations: &BTreeMap<String, String>,
        first_container_port: Option<u16>,
    ) -> Result<Self, InjectError> {
        let get = |key: &str| annotations.get(key).map(|v| v.trim());
        let port = |key: &str, default: Option<u16>| match get(key) {
            Some(v) => parse_port(v).map(Some).map_err(|e| bad(key, e)),
            None => Ok(default),
        };
        let image = get(IMAGE).unwrap_or(DEFAULT_IMAGE).to_string();
        if image.is_empty() || image.contains(char::is_whitespace) {
            return Err(bad(IMAGE, format!("not an image reference: {image:?}")));
        }
        let protocol = match get(PROTOCOL) {
            None | Some("http") => Protocol::Http,
            Some("tcp") => Protocol::Tcp,
            Some(other) => {
                return Err(bad(
                    PROTOCOL,
                    format!("expected http or tcp, got {other:?}"),
                ))
            }
        };
        let policy_configmap = get(POLICY_CONFIGMAP)
            .unwrap_or(DEFAULT_POLICY_CONFIGMAP)
            .to_string();
        if !is_dns_subdomain(&policy_configmap) {
            return Err(bad(
                POLICY_CONFIGMAP,
                format!("{policy_configmap:?} is not a valid ConfigMap name (lower-case letters, digits, '-', '.')"),
            ));
        }
        let socket = match get(SPIFFE_SOCKET) {
            None | Some("csi") => SocketSource::Csi,
            Some(dir) if is_clean_absolute(dir) => {
                SocketSource::HostPath(dir.trim_end_matches('/').to_string())
            }
            Some(other) => {
                return Err(bad(
                    SPIFFE_SOCKET,
                    format!("expected \"csi\" or an absolute directory such as /run/spire/agent-sockets, got {other:?}"),
                ))
            }
        };
        let spiffe_id = match get(SPIFFE_ID) {
            Some(id) => Some(SpiffeId::parse(id).map_err(|e| bad(SPIFFE_ID, e.to_string()))?),
            None => None,
        };
        let outbound = match get(OUTBOUND) {
            Some(list) => parse_outbound(list)?,
            None => Vec::new(),
        };
        let workers = match get(WORKERS) {
            Some(v) => parse_workers(v).map_err(|e| bad(WORKERS, e))?,
            None => NonZeroUsize::MIN,
        };
        let settings = Self {
            image,
            inbound_port: port(INBOUND_PORT, Some(8443))?.unwrap_or(8443),
            upstream_port: port(UPSTREAM_PORT, first_container_port)?,
            protocol,
            policy_configmap,
            socket,
            spiffe_id,
            admin_port: port(ADMIN_PORT, Some(15000))?.unwrap_or(15000),
            outbound,
            workers,
        };
        settings.check_ports()?;
        Ok(settings)
    }

    /// Refuses a pod with nothing to do or two listeners on one port.
    fn check_ports(&self) -> Result<(), InjectError> {
        if self.upstream_port.is_none() && self.outbound.is_empty() {
            return Err(bad(
                UPSTREAM_PORT,
                "not set and no container declares a containerPort: set the app's port, or idgate.io/outbound for a client-only pod",
            ));
        }
        let mut used = vec![(ADMIN_PORT, self.admin_port)];
        if let Some(upstream) = self.upstream_port {
            used.push((INBOUND_PORT, self.inbound_port));
            used.push((UPSTREAM_PORT, upstream));
        }
        used.extend(self.outbound.iter().map(|o| (OUTBOUND, o.local_port)));
        for (i, (key, port)) in used.iter().enumerate() {
            if let Some((other, _)) = used[..i].iter().find(|(_, p)| p == port) {
                return Err(bad(key, format!("port {port} is already used by {other}")));
            }
        }
        Ok(())
    }

    /// Refuses a sidecar port that a container of the pod declares as a `containerPort`
    /// (`declared`: container name and port): containers share the pod's network, so idgate
    /// and that container would both bind it. The upstream is exempt: it is the app's port.
    pub fn check_declared_ports(&self, declared: &[(String, u16)]) -> Result<(), InjectError> {
        let mut ours = Vec::new();
        if self.upstream_port.is_some() {
            ours.push((INBOUND_PORT, self.inbound_port));
        }
        ours.push((ADMIN_PORT, self.admin_port));
        ours.extend(self.outbound.iter().map(|o| (OUTBOUND, o.local_port)));
        for (key, port) in ours {
            if let Some((container, _)) = declared.iter().find(|(_, p)| *p == port) {
                return Err(bad(
                    key,
                    format!("port {port} is a containerPort of container {container:?}, and idgate would listen on it too: set {key} to a port no container uses"),
                ));
            }
        }
        Ok(())
    }
}

fn bad(annotation: &str, message: impl Into<String>) -> InjectError {
    InjectError::Annotation {
        annotation: annotation.to_string(),
        message: message.into(),
    }
}

fn parse_port(value: &str) -> Result<u16, String> {
    value
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("expected a port 1-65535, got {value:?}"))
}

fn parse_workers(value: &str) -> Result<NonZeroUsize, String> {
    value
        .parse::<NonZeroUsize>()
        .ok()
        .filter(|n| n.get() <= MAX_WORKERS)
        .ok_or_else(|| {
            format!("expected a whole number of threads, 1-{MAX_WORKERS}, got {value:?}")
        })
}

fn parse_outbound(list: &str) -> Result<Vec<OutboundSpec>, InjectError> {
    const FORMAT: &str = "expected LOCAL_PORT=HOST:PORT@SPIFFE_ID[, ...]";
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let fail = |why: &str| bad(OUTBOUND, format!("{FORMAT}: {why} in {entry:?}"));
            let (local, rest) = entry.split_once('=').ok_or_else(|| fail("no '='"))?;
            let (target, id) = rest.split_once('@').ok_or_else(|| fail("no '@'"))?;
            let (host, port) = target.rsplit_once(':').ok_or_else(|| fail("no port"))?;
            if !is_dns_subdomain(host) {
                return Err(fail("not a host name"));
            }
            Ok(OutboundSpec {
                local_port: parse_port(local.trim()).map_err(|e| fail(&e))?,
                host: host.to_string(),
                port: parse_port(port).map_err(|e| fail(&e))?,
                server_id: SpiffeId::parse(id.trim()).map_err(|e| fail(&e.to_string()))?,
            })
        })
        .collect()
}

/// A DNS-1123 subdomain: what Kubernetes accepts as a ConfigMap or Service host name.
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn is_clean_absolute(dir: &str) -> bool {
    dir.starts_with('/')
        && dir.len() > 1
        && !dir.split('/').any(|s| s == ".." || s == ".")
        && !dir.contains(|c: char| c.is_control() || c == '"')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, InjectError> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_annotations(&map, Some(8080))
    }

    #[test]
    fn defaults() {
        let s = settings(&[(INJECT, "true")]).unwrap();
        assert_eq!((s.inbound_port, s.upstream_port), (8443, Some(8080)));
        assert_eq!(s.socket, SocketSource::Csi);
        assert_eq!(s.policy_configmap, "idgate-policy");
        assert_eq!(s.image, DEFAULT_IMAGE);
        assert_eq!(s.workers.get(), 1);
        let s = settings(&[(WORKERS, " 2 ")]).unwrap();
        assert_eq!(s.workers.get(), 2);
    }

    #[test]
    fn outbound_and_host_path() {
        let s = settings(&[
            (OUTBOUND, "15001=billing.shop.svc:8443@spiffe://example.org/ns/shop/sa/billing, 15002=a:1@spiffe://example.org/a"),
            (SPIFFE_SOCKET, "/run/spire/agent-sockets/"),
        ])
        .unwrap();
        assert_eq!(s.outbound.len(), 2);
        assert_eq!(s.outbound[0].host, "billing.shop.svc");
        assert_eq!(
            s.socket,
            SocketSource::HostPath("/run/spire/agent-sockets".into())
        );
    }

    #[test]
    fn ports_declared_by_containers_are_refused() {
        let declared = |ports: &[u16]| -> Vec<(String, u16)> {
            ports.iter().map(|p| ("app".to_string(), *p)).collect()
        };
        let s = settings(&[(OUTBOUND, "15001=a:1@spiffe://example.org/a")]).unwrap();
        assert!(s.check_declared_ports(&declared(&[8080, 9090])).is_ok());
        for (ports, key, port) in [
            (&[8080, 8443, 15000][..], INBOUND_PORT, "8443"),
            (&[8080, 15000], ADMIN_PORT, "15000"),
            (&[8080, 15001], OUTBOUND, "15001"),
        ] {
            let error = s.check_declared_ports(&declared(ports)).unwrap_err();
            let error = error.to_string();
            assert!(error.contains(key) && error.contains(port), "{error}");
        }
    }

    #[test]
    fn refusals_name_the_annotation() {
        for (key, value) in [
            (INBOUND_PORT, "0"),
            (INBOUND_PORT, "8080"),
            (UPSTREAM_PORT, "x"),
            (POLICY_CONFIGMAP, "Bad_Name"),
            (SPIFFE_SOCKET, "relative/dir"),
            (SPIFFE_SOCKET, "/a/../b"),
            (OUTBOUND, "15001=billing:8443"),
            (OUTBOUND, "15001=bil\"ling:8443@spiffe://example.org/x"),
            (PROTOCOL, "grpc"),
            (IMAGE, "a b"),
            (SPIFFE_ID, "http://x"),
            (WORKERS, "0"),
            (WORKERS, "65"),
            (WORKERS, "two"),
        ] {
            let error = settings(&[(key, value)]).unwrap_err().to_string();
            assert!(error.contains(key), "{key}={value}: {error}");
        }
    }
}
