//! The mutating admission webhook's logic: an `AdmissionReview` v1 request in, a review
//! response with a JSONPatch out.
//!
//! The patch is the difference between the object as received and the same object after
//! [`super::inject_kind`], so applying it gives exactly what `idgate inject` writes. Pure
//! functions only: sockets and TLS live in [`super::server`].

use base64::Engine;
use serde_json::{json, Value};

use super::{inject_kind, InjectError};

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

/// The JSONPatch turning `object` into its injected form, `None` when nothing changes.
pub fn patch_for(kind: &str, object: &Value) -> Result<Option<json_patch::Patch>, InjectError> {
    let render = |e: &dyn std::fmt::Display| InjectError::Render(e.to_string());
    let mut yaml = serde_yaml_ng::to_value(object).map_err(|e| render(&e))?;
    inject_kind(kind, &mut yaml)?;
    let after = serde_json::to_value(&yaml).map_err(|e| render(&e))?;
    let patch = json_patch::diff(object, &after);
    Ok((!patch.0.is_empty()).then_some(patch))
}

fn allowed(uid: &str, patch: Option<json_patch::Patch>) -> Value {
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
