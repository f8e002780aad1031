//! The injected sidecar: its container, its volumes and the TOML config it receives in
//! `$IDGATE_CONFIG_TOML`.
//!
//! Rendering is pure and deterministic (same settings, same output), which is what makes
//! injection idempotent. A webhook cannot create objects, so everything the sidecar needs
//! is carried by the container itself; this file never names a generated object.

use serde::Serialize;
use serde_yaml_ng::Value;

use super::settings::{Protocol, Settings, SocketSource};
use super::InjectError;

/// The sidecar container's name.
pub const CONTAINER: &str = "idgate";
/// The env variable carrying the sidecar's config. A container named [`CONTAINER`] with
/// it is one idgate injected earlier (see [`is_injected`]); without it, it is the user's.
pub const CONFIG_ENV: &str = "IDGATE_CONFIG_TOML";
/// Volume holding the SPIRE agent's Workload API socket.
pub const SOCKET_VOLUME: &str = "idgate-spiffe";
/// Volume holding the policy ConfigMap.
pub const POLICY_VOLUME: &str = "idgate-policy";
/// Where the socket volume is mounted in the sidecar.
pub const SOCKET_DIR: &str = "/spiffe-workload-api";
/// The agent socket's file name inside [`SOCKET_DIR`].
pub const SOCKET_FILE: &str = "spire-agent.sock";
/// Where the policy ConfigMap is mounted.
pub const POLICY_DIR: &str = "/etc/idgate/policy";
/// The non-root UID/GID the sidecar runs as (distroless `nonroot`).
pub const UID: u64 = 65532;

/// The sidecar's config, as TOML (every string quoted by the TOML encoder).
pub fn config_toml(s: &Settings) -> String {
    let q = |v: &str| toml::Value::String(v.to_string()).to_string();
    let mut out = String::from("[identity]\nsource = \"spire\"\n");
    out += &format!(
        "socket = {}\n",
        q(&format!("unix://{SOCKET_DIR}/{SOCKET_FILE}"))
    );
    if let Some(id) = &s.spiffe_id {
        out += &format!("spiffe_id = {}\n", q(id.as_str()));
    }
    if let Some(upstream) = s.upstream_port {
        let (protocol, scheme) = match s.protocol {
            Protocol::Http => ("http", "http"),
            Protocol::Tcp => ("tcp", "tcp"),
        };
        out += "\n[[inbound]]\nname = \"inbound\"\n";
        out += &format!("listen = \"0.0.0.0:{}\"\n", s.inbound_port);
        out += &format!("upstream = \"{scheme}://127.0.0.1:{upstream}\"\n");
        out += &format!("protocol = \"{protocol}\"\n");
        out += &format!("policy = {}\n", q(&format!("{POLICY_DIR}/policy.toml")));
    }
    for o in &s.outbound {
        // Unique by construction: local ports are unique (Settings checks), and the text
        // after the last '-' is the port, which no host can change.
        let name = format!("to-{}-{}", o.host, o.local_port);
        out += "\n[[outbound]]\n";
        out += &format!("name = {}\n", q(&name));
        out += &format!("listen = \"127.0.0.1:{}\"\n", o.local_port);
        out += &format!("target = {}\n", q(&format!("{}:{}", o.host, o.port)));
        out += &format!("server_ids = [{}]\n", q(o.server_id.as_str()));
    }
    out += &format!("\n[admin]\nlisten = \"0.0.0.0:{}\"\n", s.admin_port);
    out += "\n[log]\nformat = \"json\"\ndecisions = \"stdout\"\n";
    if s.workers.get() > 1 {
        out += &format!("\n[runtime]\nworkers = {}\n", s.workers);
    }
    out
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    name: &'static str,
    image: String,
    image_pull_policy: &'static str,
    args: Vec<&'static str>,
    /// Native sidecar: started before the app, kept running, ignored for Job completion.
    restart_policy: &'static str,
    env: Vec<EnvVar>,
    ports: Vec<Port>,
    startup_probe: Probe,
    readiness_probe: Probe,
    liveness_probe: Probe,
    resources: Value,
    security_context: Value,
    volume_mounts: Vec<Mount>,
}

#[derive(Serialize)]
struct EnvVar {
    name: &'static str,
    value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Port {
    name: &'static str,
    container_port: u16,
    protocol: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    http_get: HttpGet,
    period_seconds: u32,
    failure_threshold: u32,
}

#[derive(Serialize)]
struct HttpGet {
    path: &'static str,
    port: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Mount {
    name: &'static str,
    mount_path: String,
    read_only: bool,
}

/// The sidecar container, as a YAML value ready to go into `initContainers`.
pub fn container(s: &Settings) -> Result<Value, InjectError> {
    let probe = |path, period, failures| Probe {
        http_get: HttpGet {
            path,
            port: "idgate-admin",
        },
        period_seconds: period,
        failure_threshold: failures,
    };
    let mut ports = Vec::new();
    if s.upstream_port.is_some() {
        ports.push(Port {
            name: "idgate-mtls",
            container_port: s.inbound_port,
            protocol: "TCP",
        });
    }
    ports.push(Port {
        name: "idgate-admin",
        container_port: s.admin_port,
        protocol: "TCP",
    });
    let mut volume_mounts = vec![Mount {
        name: SOCKET_VOLUME,
        mount_path: SOCKET_DIR.into(),
        read_only: true,
    }];
    if s.upstream_port.is_some() {
        volume_mounts.push(Mount {
            name: POLICY_VOLUME,
            mount_path: POLICY_DIR.into(),
            read_only: true,
        });
    }
    let c = Container {
        name: CONTAINER,
        image: s.image.clone(),
        image_pull_policy: "IfNotPresent",
        args: vec!["run"],
        restart_policy: "Always",
        env: vec![EnvVar {
            name: CONFIG_ENV,
            value: config_toml(s),
        }],
        ports,
        // The app starts once this passes: an SVID is loaded and every listener is bound.
        startup_probe: probe("/readyz", 1, 120),
        readiness_probe: probe("/readyz", 5, 2),
        liveness_probe: probe("/healthz", 10, 3),
        resources: yaml("requests: {cpu: 10m, memory: 32Mi}\nlimits: {memory: 128Mi}")?,
        security_context: yaml(&format!(
            "runAsNonRoot: true\nrunAsUser: {UID}\nrunAsGroup: {UID}\n\
             readOnlyRootFilesystem: true\nallowPrivilegeEscalation: false\n\
             capabilities: {{drop: [ALL]}}\nseccompProfile: {{type: RuntimeDefault}}"
        ))?,
        volume_mounts,
    };
    serde_yaml_ng::to_value(c).map_err(|e| InjectError::Render(e.to_string()))
}

/// Whether `container` is a sidecar idgate injected: it sets the [`CONFIG_ENV`] variable,
/// which only idgate's own config loader reads. Only such a container is replaced (and
/// only then are the `idgate-*` volumes taken to be idgate's).
pub fn is_injected(container: &Value) -> bool {
    container
        .get("env")
        .and_then(Value::as_sequence)
        .is_some_and(|env| {
            env.iter()
                .any(|e| e.get("name").and_then(Value::as_str) == Some(CONFIG_ENV))
        })
}

/// The pod volumes the sidecar mounts, by name.
pub fn volumes(s: &Settings) -> Result<Vec<(&'static str, Value)>, InjectError> {
    let socket = match &s.socket {
        SocketSource::Csi => yaml(&format!(
            "name: {SOCKET_VOLUME}\ncsi: {{driver: csi.spiffe.io, readOnly: true}}"
        ))?,
        SocketSource::HostPath(dir) => {
            let mut v = yaml(&format!(
                "name: {SOCKET_VOLUME}\nhostPath: {{path: /, type: Directory}}"
            ))?;
            v["hostPath"]["path"] = Value::String(dir.clone());
            v
        }
    };
    let mut out = vec![(SOCKET_VOLUME, socket)];
    if s.upstream_port.is_some() {
        let mut policy = yaml(&format!("name: {POLICY_VOLUME}\nconfigMap: {{name: x}}"))?;
        policy["configMap"]["name"] = Value::String(s.policy_configmap.clone());
        out.push((POLICY_VOLUME, policy));
    }
    Ok(out)
}

fn yaml(text: &str) -> Result<Value, InjectError> {
    serde_yaml_ng::from_str(text).map_err(|e| InjectError::Render(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::settings::{
        ADMIN_PORT, INBOUND_PORT, OUTBOUND, PROTOCOL, SPIFFE_ID, UPSTREAM_PORT, WORKERS,
    };
    use super::*;
    use crate::config::{Config, SourceFile};

    /// Loads `config_toml(s)` with idgate's own config loader (the policy path pointed at
    /// a real file in `dir`).
    fn load(s: &Settings, dir: &std::path::Path) -> Result<Config, String> {
        let policy = dir.join("policy.toml");
        std::fs::write(&policy, "default = \"deny\"\n").unwrap();
        let text = config_toml(s).replace(
            &format!("{POLICY_DIR}/policy.toml"),
            &policy.display().to_string(),
        );
        Config::from_source(&SourceFile {
            path: "$IDGATE_CONFIG_TOML".into(),
            text,
        })
        .map_err(|e| e.to_string())
    }

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, InjectError> {
        let annotations: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_annotations(&annotations, Some(8080))
    }

    #[test]
    fn rendered_config_loads_as_a_real_config() {
        let s = settings(&[
            (
                OUTBOUND,
                "15001=billing.shop.svc:8443@spiffe://example.org/ns/shop/sa/billing",
            ),
            (WORKERS, "2"),
        ])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = load(&s, dir.path()).unwrap();
        assert_eq!(config.inbound.len(), 1);
        assert_eq!(config.outbound.len(), 1);
        assert_eq!(config.admin.listen.port(), 15000);
        assert_eq!(config.runtime.workers.get(), 2);
    }

    /// Every combination of these annotation values that `Settings` accepts renders a
    /// config idgate loads: what injection promised, the sidecar can start with.
    #[test]
    fn every_accepted_annotation_set_loads() {
        let id = "spiffe://example.org/x";
        let outbounds = [
            None,
            Some(format!(
                "15001=a:1@{id}, 15002=a:2@{id}, 15003=a-15001:1@{id}"
            )),
            Some(format!("15001=a:1@{id}, 15002=a:1@{id}")),
            Some(format!("15001=a-1:1@{id}, 1=a:1@{id}, 15002=a.b:1@{id}")),
            Some(format!("8443=billing:8443@{id}")),
        ];
        let dir = tempfile::tempdir().unwrap();
        let (mut accepted, mut tried) = (0, 0);
        for outbound in &outbounds {
            for upstream in [None, Some("8080"), Some("15002")] {
                for inbound in [None, Some("9443"), Some("15001")] {
                    for protocol in ["http", "tcp"] {
                        for admin in [None, Some("15003")] {
                            for spiffe_id in [None, Some(id)] {
                                let mut pairs = vec![(PROTOCOL, protocol)];
                                let optional = [
                                    (OUTBOUND, outbound.as_deref()),
                                    (UPSTREAM_PORT, upstream),
                                    (INBOUND_PORT, inbound),
                                    (ADMIN_PORT, admin),
                                    (SPIFFE_ID, spiffe_id),
                                ];
                                pairs
                                    .extend(optional.iter().filter_map(|(k, v)| Some((*k, (*v)?))));
                                tried += 1;
                                let Ok(s) = settings(&pairs) else { continue };
                                accepted += 1;
                                if let Err(error) = load(&s, dir.path()) {
                                    panic!("{pairs:?} was accepted but its config fails: {error}");
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(accepted > tried / 4, "{accepted} of {tried} accepted");
    }
}
