//! The webhook's HTTPS server: `POST /mutate` (AdmissionReview v1) and `GET /healthz`.
//!
//! TLS is server-only (the API server authenticates us by the CA bundle in the
//! MutatingWebhookConfiguration) with the ring provider. The certificate files are
//! re-read when they change on disk (cert-manager or a Secret update), checked every
//! [`RELOAD_EVERY`]; a bad new pair is logged and the last good one kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::endpoint::{Endpoint, HEAD_TIMEOUT};

/// How often the certificate files are checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);
/// Largest review body accepted: 3.5 MiB. The API server refuses request bodies over
/// 3 MiB (its `MaxRequestBodyBytes`) and etcd stores objects up to 1.5 MiB, so a review
/// (that object as JSON plus a small envelope; for pods made by controllers, JSON of a
/// protobuf-sent object, somewhat larger) fits with room to spare. Anything bigger is not
/// from the API server, and parsing it (about 10 times its size in memory) could push the
/// webhook past its 128Mi limit.
pub const MAX_BODY: usize = 7 << 19;
/// Connections the webhook serves at once (the API servers' reviews in flight).
const MAX_CONNECTIONS: usize = 128;
/// Reviews read and answered at once: with [`MAX_BODY`] and the ~10x a body costs to
/// parse, two keep the webhook well inside its 128Mi however many connections send.
/// (A review takes milliseconds; others wait for their turn.)
static REVIEWS_AT_ONCE: Semaphore = Semaphore::const_new(2);
/// How long a review's body may take to arrive once its turn came (the API server sends
/// it at once; a client that trickles it must not hold a turn).
const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the webhook's certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A PEM file is unreadable or holds nothing usable.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The key does not fit the ring provider or the certificate.
    #[error("certificate and key do not form a usable pair: {0}")]
    Pair(#[from] rustls::Error),
}

/// The serving certificate, swapped in place when the files change.
#[derive(Debug)]
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    stamp: std::sync::Mutex<Option<(SystemTime, SystemTime)>>,
}

impl CertFiles {
    /// Loads the pair once; fails when it is unusable.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, CertError> {
        let files = Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: ArcSwap::from_pointee(read_pair(cert, key)?),
            stamp: std::sync::Mutex::new(stamps(cert, key)),
        };
        Ok(Arc::new(files))
    }

    /// Re-reads the pair if either file's modification time changed.
    pub fn reload_if_changed(&self) {
        let now = stamps(&self.cert, &self.key);
        let Ok(mut stamp) = self.stamp.lock() else {
            return;
        };
        if now == *stamp {
            return;
        }
        match read_pair(&self.cert, &self.key) {
            Ok(pair) => {
                self.current.store(Arc::new(pair));
                *stamp = now;
                tracing::info!(cert = %self.cert.display(), "webhook certificate reloaded");
            }
            Err(error) => {
                tracing::error!(%error, "webhook certificate not reloaded; keeping the last good one")
            }
        }
    }

    /// A rustls server config serving this pair (HTTP/2 and HTTP/1.1 by ALPN).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, CertError> {
        let mut config = ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn stamps(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((modified(cert)?, modified(key)?))
}

fn read_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, CertError> {
    let file_error = |path: &Path, message: String| CertError::File {
        path: path.display().to_string(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(cert, "no CERTIFICATE block".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e.to_string()))?;
    Ok(CertifiedKey::from_der(
        chain,
        key_der,
        &crate::tls::provider(),
    )?)
}

/// Serves the webhook on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    certs: Arc<CertFiles>,
    shutdown: CancellationToken,
) -> Result<(), CertError> {
    let acceptor = TlsAcceptor::from(certs.server_config()?);
    let endpoint = Arc::new(Endpoint::new("webhook", MAX_CONNECTIONS));
    let mut reload = tokio::time::interval(RELOAD_EVERY);
    loop {
        let (stream, slot) = tokio::select! {
            accepted = endpoint.accept(&listener) => accepted,
            _ = reload.tick() => {
                certs.reload_if_changed();
                continue;
            }
            _ = shutdown.cancelled() => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => return tracing::debug!(%error, "webhook TLS handshake failed"),
                Err(_) => return tracing::debug!("webhook TLS handshake timed out"),
            };
            endpoint.serve(TokioIo::new(tls), slot, respond).await;
        });
    }
}

async fn respond(request: Request<Incoming>) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
        (&Method::POST, "/mutate") => {
            let Ok(_turn) = REVIEWS_AT_ONCE.acquire().await else {
                unreachable!("the semaphore is never closed");
            };
            let body = Limited::new(request.into_body(), MAX_BODY).collect();
            let body = match tokio::time::timeout(BODY_TIMEOUT, body).await {
                Ok(Ok(body)) => body.to_bytes(),
                Ok(Err(error)) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read the body: {error}\n"),
                    )
                }
                Err(_) => {
                    return text(
                        StatusCode::REQUEST_TIMEOUT,
                        format!("the body did not arrive within {BODY_TIMEOUT:?}\n"),
                    )
                }
            };
            match super::webhook::review(&body) {
                Ok(answer) => {
                    let bytes = serde_json::to_vec(&answer).unwrap_or_default();
                    Response::builder()
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(Full::new(Bytes::from(bytes)))
                        .unwrap_or_default()
                }
                Err(error) => {
                    tracing::warn!(%error, "bad admission review");
                    text(StatusCode::BAD_REQUEST, format!("{error}\n"))
                }
            }
        }
        (_, "/mutate") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n".into()),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try POST /mutate or GET /healthz\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
