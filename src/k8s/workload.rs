//! Finding pod templates inside Kubernetes objects and adding the sidecar to those that
//! ask for it.
//!
//! Knows where each workload kind keeps its pod template (Pod, Deployment, StatefulSet,
//! DaemonSet, ReplicaSet, Job, CronJob, and `*List` items). Objects of other kinds and pods
//! without `idgate.io/inject: "true"` are never modified.

use std::collections::BTreeMap;

use serde_yaml_ng::{Mapping, Value};

use super::settings::{wants_injection, Settings, INJECT};
use super::sidecar::{self, CONTAINER, POLICY_VOLUME, SOCKET_VOLUME};
use super::InjectError;

/// Injects the sidecar into every annotated pod template of `object`, whatever its kind
/// (read from the object's own `kind`).
pub fn inject_object(object: &mut Value) -> Result<(), InjectError> {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    inject_kind(&kind, object)
}

/// Injects into `object` treating it as a `kind` (the webhook knows the kind from the
/// request even when the object omits it).
pub fn inject_kind(kind: &str, object: &mut Value) -> Result<(), InjectError> {
    if kind.ends_with("List") {
        return inject_items(object);
    }
    let Some(template_path) = template_path(kind) else {
        return Ok(());
    };
    let mut template = Some(object);
    for key in template_path {
        template = template.and_then(|v| v.get_mut(*key));
    }
    match template {
        Some(template) => inject_template(template, &template_path.join(".")),
        None => Ok(()),
    }
}

/// Where an object of `kind` keeps its pod template (empty for a Pod, which is one);
/// `None` for kinds without one (`*List`s hold objects, see [`inject_kind`]).
pub fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

fn inject_items(list: &mut Value) -> Result<(), InjectError> {
    let Some(items) = list.get_mut("items").and_then(Value::as_sequence_mut) else {
        return Ok(());
    };
    for (i, item) in items.iter_mut().enumerate() {
        inject_object(item).map_err(|e| InjectError::Object {
            object: format!("items[{i}] ({})", describe(item)),
            source: Box::new(e),
        })?;
    }
    Ok(())
}

/// `Kind namespace/name`, for error messages.
pub fn describe(object: &Value) -> String {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_string();
    let kind = text(object.get("kind"));
    let meta = object.get("metadata");
    let name = text(meta.and_then(|m| m.get("name")));
    let kind = if kind.is_empty() { "object" } else { &kind };
    match text(meta.and_then(|m| m.get("namespace"))) {
        ns if ns.is_empty() => format!("{kind} {name}").trim_end().to_string(),
        ns => format!("{kind} {ns}/{name}"),
    }
}

/// The only keys of a pod spec that injection changes (the webhook converts and patches
/// just these).
pub const SPEC_KEYS: [&str; 3] = ["containers", "initContainers", "volumes"];

/// A pod (or pod template): `metadata.annotations` decide, `spec` is changed.
fn inject_template(template: &mut Value, at: &str) -> Result<(), InjectError> {
    let annotations = annotations(template);
    if !wants_injection(&annotations) {
        return Ok(());
    }
    let spec = template
        .get_mut("spec")
        .and_then(Value::as_mapping_mut)
        .ok_or_else(|| shape(&field(at, "spec"), "missing or not a mapping"))?;
    inject_spec(&annotations, spec, at)
}

/// `at.name`, or `name` at the top.
fn field(at: &str, name: &str) -> String {
    match at {
        "" => name.to_string(),
        _ => format!("{at}.{name}"),
    }
}

/// Adds the sidecar to the spec of a pod template at `at` whose `annotations` ask for it.
/// Changes only the [`SPEC_KEYS`] of `spec`, nothing else.
pub fn inject_spec(
    annotations: &BTreeMap<String, String>,
    spec: &mut Mapping,
    at: &str,
) -> Result<(), InjectError> {
    let field = |name: &str| field(at, name);
    let settings = Settings::from_annotations(annotations, first_container_port(spec))?;
    settings.check_declared_ports(&declared_ports(spec))?;

    let mut injected_before = false;
    for key in ["containers", "initContainers"] {
        let list = seq_mut(spec, key, &field(&format!("spec.{key}")))?;
        for (i, c) in list.iter().enumerate() {
            if name_of(c) != Some(CONTAINER) {
                continue;
            }
            if !sidecar::is_injected(c) {
                return Err(clash(format!(
                    "{}[{i}] is named {CONTAINER:?}, the name of idgate's sidecar, but idgate did not add it (it has no {} env variable): rename it",
                    field(&format!("spec.{key}")),
                    sidecar::CONFIG_ENV
                )));
            }
            injected_before = true;
        }
    }
    let volumes = seq_mut(spec, "volumes", &field("spec.volumes"))?;
    if !injected_before {
        if let Some((i, name)) = volumes.iter().enumerate().find_map(|(i, v)| {
            name_of(v)
                .filter(|n| [SOCKET_VOLUME, POLICY_VOLUME].contains(n))
                .map(|n| (i, n))
        }) {
            return Err(clash(format!(
                "{}[{i}] is named {name:?}, a volume name idgate's sidecar needs, but the pod has no sidecar injected by idgate: rename the volume",
                field("spec.volumes")
            )));
        }
    }

    let containers = seq_mut(spec, "containers", &field("spec.containers"))?;
    containers.retain(|c| name_of(c) != Some(CONTAINER));

    let init = seq_mut(spec, "initContainers", &field("spec.initContainers"))?;
    let container = sidecar::container(&settings)?;
    match init.iter().position(|c| name_of(c) == Some(CONTAINER)) {
        Some(i) => init[i] = container,
        None => init.insert(0, container),
    }

    let volumes = seq_mut(spec, "volumes", &field("spec.volumes"))?;
    if settings.upstream_port.is_none() {
        volumes.retain(|v| name_of(v) != Some(POLICY_VOLUME));
    }
    for (name, volume) in sidecar::volumes(&settings)? {
        match volumes.iter().position(|v| name_of(v) == Some(name)) {
            Some(i) => volumes[i] = volume,
            None => volumes.push(volume),
        }
    }
    Ok(())
}

/// String-valued annotations (Kubernetes refuses any other kind anyway).
fn annotations(template: &Value) -> BTreeMap<String, String> {
    template
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
        .collect()
}

/// The first `containerPort` of the first app container: the upstream when not annotated.
fn first_container_port(spec: &Mapping) -> Option<u16> {
    spec.get("containers")?
        .as_sequence()?
        .iter()
        .find(|c| name_of(c) != Some(CONTAINER))?
        .get("ports")?
        .as_sequence()?
        .first()?
        .get("containerPort")?
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
}

/// Every `containerPort` of the pod's containers and init containers, with the container's
/// name (idgate's own sidecar left out).
fn declared_ports(spec: &Mapping) -> Vec<(String, u16)> {
    let containers = ["containers", "initContainers"]
        .into_iter()
        .filter_map(|key| spec.get(key)?.as_sequence())
        .flatten()
        .filter(|c| !(name_of(c) == Some(CONTAINER) && sidecar::is_injected(c)));
    let mut declared = Vec::new();
    for c in containers {
        let ports = c.get("ports").and_then(Value::as_sequence);
        for port in ports.into_iter().flatten() {
            let port = port.get("containerPort").and_then(Value::as_u64);
            if let Some(port) = port.and_then(|p| u16::try_from(p).ok()) {
                declared.push((name_of(c).unwrap_or("").to_string(), port));
            }
        }
    }
    declared
}

fn name_of(item: &Value) -> Option<&str> {
    item.get("name").and_then(Value::as_str)
}

/// `spec[key]` as a list, created empty when absent (or null).
fn seq_mut<'a>(
    spec: &'a mut Mapping,
    key: &str,
    field: &str,
) -> Result<&'a mut Vec<Value>, InjectError> {
    let slot = spec
        .entry(Value::String(key.to_string()))
        .or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Sequence(Vec::new());
    }
    slot.as_sequence_mut()
        .ok_or_else(|| shape(field, "not a list"))
}

/// A user's container or volume has a name the sidecar needs.
fn clash(message: String) -> InjectError {
    InjectError::Annotation {
        annotation: INJECT.to_string(),
        message,
    }
}

fn shape(field: &str, message: &str) -> InjectError {
    InjectError::Shape {
        field: field.to_string(),
        message: message.to_string(),
    }
}
