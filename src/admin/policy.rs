//! `GET /policy`: every inbound listener's policy in force, each rule with its hits by
//! decision and its last-hit time, so rules nobody uses show up.
//!
//! It only reads the counters the policy room keeps (`policy::RuleHits`); it never
//! changes a policy or resets a counter.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;

use crate::policy::RuleHits;

/// The JSON listing: `{"listeners": [{"listener", "policy_version", "mode", "default":
/// {"action", "hits", "last_hit"}, "rules": [{"name", "action", "audit", "expires",
/// "hits": {"allow", "deny", "audit_deny", "dry_run"}, "last_hit"}]}]}`; times are RFC 3339,
/// `last_hit` is null for a rule never hit since its policy was loaded (or inherited).
pub fn respond(hits: &RuleHits) -> Response<Full<Bytes>> {
    let body = match serde_json::to_string_pretty(&hits.listing()) {
        Ok(body) => body + "\n",
        Err(error) => {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode: {error}\n"),
            )
        }
    };
    let mut response = plain(StatusCode::OK, body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn lists_as_json() {
        let response = respond(&RuleHits::default());
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value, serde_json::json!({"listeners": []}));
    }
}
