//! The admin endpoint: `/healthz`, `/readyz`, `/metrics`, `/identity`, `/policy` over plain HTTP.
//!
//! It only reads state other rooms own (readiness guards, the identity handle, the
//! metrics registry) and encodes it; it never changes anything.

pub mod policy;
mod readiness;

pub use readiness::{Readiness, ReadyGuard};

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::endpoint::Endpoint;
use crate::identity::{IdentityHandle, IdentityHealth};
use crate::policy::RuleHits;

/// What the admin endpoint reports on.
#[derive(Clone)]
pub struct AdminState {
    /// Every metric of the process.
    pub registry: Arc<Registry>,
    /// The identity in use.
    pub identity: IdentityHandle,
    /// Whether that identity is still fit to serve (expiry, bundle age).
    pub health: IdentityHealth,
    /// Startup conditions.
    pub readiness: Readiness,
    /// Cancelled when draining: `/readyz` turns 503 at once.
    pub shutdown: CancellationToken,
    /// Per-rule hit counts, for `/policy`.
    pub rule_hits: RuleHits,
}

/// Connections the admin endpoint serves at once (probes, a scraper, a person).
const MAX_CONNECTIONS: usize = 64;

/// Serves the admin endpoint until `stop` (after the drain, so `/readyz` can tell load
/// balancers about it while it runs).
pub async fn serve(listener: TcpListener, state: AdminState, stop: CancellationToken) {
    let endpoint = Arc::new(Endpoint::new("admin", MAX_CONNECTIONS));
    loop {
        let (stream, slot) = tokio::select! {
            accepted = endpoint.accept(&listener) => accepted,
            _ = stop.cancelled() => break,
        };
        let state = state.clone();
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let respond = move |request: Request<Incoming>| {
                let answer = respond(&state, &request);
                std::future::ready(answer)
            };
            endpoint.serve(TokioIo::new(stream), slot, respond).await;
        });
    }
}

fn respond(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
    }
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => readyz(state),
        "/metrics" => metrics(state),
        "/identity" => identity(state),
        "/policy" => policy::respond(&state.rule_hits),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz /readyz /metrics /identity /policy\n".into(),
        ),
    }
}

/// Why the process is not ready, empty when it is.
pub fn not_ready_reasons(state: &AdminState) -> Vec<String> {
    let mut reasons = Vec::new();
    if state.shutdown.is_cancelled() {
        reasons.push("draining".to_string());
    }
    if state.identity.current().is_none() {
        reasons.push(format!("waiting for SVID from {}", state.identity.source()));
    }
    reasons.extend(state.health.reasons(&state.identity));
    reasons.extend(state.readiness.reasons());
    reasons
}

fn readyz(state: &AdminState) -> Response<Full<Bytes>> {
    let reasons = not_ready_reasons(state);
    match reasons.is_empty() {
        true => text(StatusCode::OK, "ready\n".into()),
        false => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reasons.join("; ")),
        ),
    }
}

fn metrics(state: &AdminState) -> Response<Full<Bytes>> {
    let mut body = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {error}\n"),
        );
    }
    let mut response = text(StatusCode::OK, body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    response
}

fn identity(state: &AdminState) -> Response<Full<Bytes>> {
    let Some(material) = state.identity.current() else {
        let reason = format!("no SVID yet: waiting for {}\n", state.identity.source());
        return text(StatusCode::SERVICE_UNAVAILABLE, reason);
    };
    let not_after = OffsetDateTime::from_unix_timestamp(material.svid.not_after)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok());
    let body = serde_json::json!({
        "spiffe_id": material.svid.spiffe_id.as_str(),
        "serial": material.svid.serial,
        "not_after": not_after,
        "trust_domains": material.bundles.trust_domains(),
    });
    let mut response = text(StatusCode::OK, format!("{body}\n"));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .expect("static parts make a valid response")
}
