//! The mutating admission webhook's logic: an `AdmissionReview` v1 request in, a review
//! response with a JSONPatch out.
//!
//! Annotations are read straight from the parsed JSON, so a pod that does not ask for
//! injection (nearly every pod the API server sends) is answered without converting or
//! copying any of it. For one that asks, only the spec lists injection changes go through
//! `workload::inject_spec`, the code `idgate inject` runs, so applying the patch
//! gives exactly what `idgate inject` writes. Pure functions only: sockets and TLS live in
//! [`super::server`].

use std::collections::BTreeMap;

use base64::Engine;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use serde_json::{json, Value};

use super::settings::wants_injection;
use super::workload::{inject_spec, template_path, SPEC_KEYS};
use super::InjectError;

/// `apiVersion` of the reviews this webhook accepts and answers.
pub const API_VERSION: &str = "admission.k8s.io/v1";

/// Why a review request could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Not JSON.
    #[error("the body is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not an AdmissionReview v1 request.
    #[error("not an {API_VERSION} AdmissionReview request: {0}")]
    Shape(&'static str),
}

/// Answers one AdmissionReview request body: allowed with a patch when the object changes,
/// allowed without one when it does not, refused (400, with the reason) when its
/// `idgate.io/*` annotations cannot be used.
pub fn review(body: &[u8]) -> Result<Value, ReviewError> {
    let review: Value = serde_json::from_slice(body)?;
    if review.get("apiVersion").and_then(Value::as_str) != Some(API_VERSION) {
        return Err(ReviewError::Shape("apiVersion must be admission.k8s.io/v1"));
    }
    if review.get("kind").and_then(Value::as_str) != Some("AdmissionReview") {
        return Err(ReviewError::Shape("kind must be AdmissionReview"));
    }
    let request = review
        .get("request")
        .ok_or(ReviewError::Shape("no request"))?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .ok_or(ReviewError::Shape("request.uid missing"))?;
    let kind = request
        .get("kind")
        .and_then(|k| k.get("kind"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let response = match request.get("object") {
        Some(object) if !object.is_null() => match patch_for(kind, object) {
            Ok(patch) => allowed(uid, patch),
            Err(error) => refused(uid, &error),
        },
        _ => allowed(uid, None),
    };
    Ok(json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}))
}

/// The JSONPatch turning `object` (of `kind`) into its injected form, `None` when nothing
/// changes.
pub fn patch_for(kind: &str, object: &Value) -> Result<Option<Patch>, InjectError> {
    let mut ops = Vec::new();
    collect(kind, object, &mut Vec::new(), &mut ops)?;
    Ok((!ops.is_empty()).then_some(Patch(ops)))
}

/// Appends the operations for `object`, found at the JSON pointer `at`, to `ops`.
fn collect(
    kind: &str,
    object: &Value,
    at: &mut Vec<String>,
    ops: &mut Vec<PatchOperation>,
) -> Result<(), InjectError> {
    if kind.ends_with("List") {
        let items = object.get("items").and_then(Value::as_array);
        for (i, item) in items.into_iter().flatten().enumerate() {
            let item_kind = item.get("kind").and_then(Value::as_str).unwrap_or("");
            at.extend(["items".to_string(), i.to_string()]);
            collect(item_kind, item, at, ops).map_err(|e| InjectError::Object {
                object: format!("items[{i}] ({item_kind})"),
                source: Box::new(e),
            })?;
            at.truncate(at.len() - 2);
        }
        return Ok(());
    }
    let Some(path) = template_path(kind) else {
        return Ok(());
    };
    let Some(template) = path.iter().try_fold(object, |v, key| v.get(key)) else {
        return Ok(());
    };
    let annotations: BTreeMap<String, String> = template
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    if !wants_injection(&annotations) {
        return Ok(());
    }
    let dotted = path.join(".");
    let spec = template
        .get("spec")
        .and_then(Value::as_object)
        .ok_or_else(|| InjectError::Shape {
            field: [dotted.as_str(), "spec"]
                .join(".")
                .trim_start_matches('.')
                .into(),
            message: "missing or not a mapping".into(),
        })?;
    let render = |e: &dyn std::fmt::Display| InjectError::Render(e.to_string());
    let mut lists = serde_yaml_ng::Mapping::new();
    for key in SPEC_KEYS {
        if let Some(list) = spec.get(key) {
            let list = serde_yaml_ng::to_value(list).map_err(|e| render(&e))?;
            lists.insert(key.into(), list);
        }
    }
    inject_spec(&annotations, &mut lists, &dotted)?;
    for key in SPEC_KEYS {
        let after = match lists.get(key) {
            Some(list) => serde_json::to_value(list).map_err(|e| render(&e))?,
            None => continue,
        };
        if spec.get(key) != Some(&after) {
            let tokens = at.iter().map(String::as_str).chain(path.iter().copied());
            let tokens = tokens.chain(["spec", key]);
            ops.push(PatchOperation::Add(AddOperation {
                path: PointerBuf::from_tokens(tokens),
                value: after,
            }));
        }
    }
    Ok(())
}

fn allowed(uid: &str, patch: Option<Patch>) -> Value {
    let mut response = json!({"uid": uid, "allowed": true});
    if let Some(patch) = patch {
        // A Patch always serialises: it is plain strings and JSON values.
        let bytes = serde_json::to_vec(&patch).unwrap_or_default();
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    response
}

fn refused(uid: &str, error: &InjectError) -> Value {
    json!({
        "uid": uid,
        "allowed": false,
        "status": {"code": 400, "message": format!("idgate: {error}")},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": API_VERSION, "kind": "AdmissionReview",
            "request": {"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "object": object}
        }))
        .unwrap()
    }

    #[test]
    fn unannotated_pod_is_allowed_without_patch() {
        let pod = json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "app"}]}});
        let answer = review(&request(pod)).unwrap();
        assert_eq!(answer["response"], json!({"uid": "u-1", "allowed": true}));
    }

    #[test]
    fn patch_applied_equals_injection_for_templates_and_lists() {
        let template = json!({
            "metadata": {"annotations": {"idgate.io/inject": "true"}},
            "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]}
        });
        let deployment = json!({"kind": "Deployment", "spec": {"template": template}});
        let list = json!({"kind": "List", "items": [{"kind": "Service"}, deployment.clone()]});
        for object in [deployment, list] {
            let kind = object["kind"].as_str().unwrap();
            let patch = patch_for(kind, &object).unwrap().unwrap();
            let mut patched = object.clone();
            json_patch::patch(&mut patched, &patch).unwrap();
            let mut injected = serde_yaml_ng::to_value(&object).unwrap();
            super::super::inject_kind(kind, &mut injected).unwrap();
            assert_eq!(patched, serde_json::to_value(injected).unwrap(), "{kind}");
            assert!(patch_for(kind, &patched).unwrap().is_none(), "{kind}");
        }
    }

    #[test]
    fn bad_annotation_is_refused_with_reason() {
        let pod = json!({
            "metadata": {"annotations": {"idgate.io/inject": "true", "idgate.io/inbound-port": "x"}},
            "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]}
        });
        let answer = review(&request(pod)).unwrap();
        assert_eq!(answer["response"]["allowed"], json!(false));
        let message = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains("idgate.io/inbound-port"), "{message}");
    }

    #[test]
    fn a_users_container_named_idgate_is_refused() {
        let pod = json!({
            "metadata": {"annotations": {"idgate.io/inject": "true"}},
            "spec": {"containers": [
                {"name": "app", "ports": [{"containerPort": 8080}]},
                {"name": "idgate", "image": "mine:1"}
            ]}
        });
        let answer = review(&request(pod)).unwrap();
        assert_eq!(answer["response"]["allowed"], json!(false));
        let message = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains("spec.containers[1]"), "{message}");
    }

    #[test]
    fn malformed_reviews_are_errors() {
        assert!(review(b"{").is_err());
        assert!(
            review(br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#)
                .is_err()
        );
        assert!(review(
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#
        )
        .is_err());
    }
}
