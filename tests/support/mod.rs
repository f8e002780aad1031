//! Shared test fixtures: a generated PKI on disk, sidecars started in-process from real
//! config files, the echo upstream, HTTP clients (plain, h2c, and direct mTLS), and raw
//! HTTP/2 frames (`frames`).
#![allow(dead_code)] // each test binary uses a different part of the fixtures

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use idgate::app::{self, App};
use idgate::config::Config;
use idgate::devpki::{DevCa, IssuedCert, LeafSpec};
use idgate::spiffe_id::SpiffeId;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::ServerName;
use tempfile::TempDir;
use tokio::net::TcpStream;

pub mod frames;
pub mod process;

pub const TD: &str = "example.org";
pub const SERVER_ID: &str = "spiffe://example.org/ns/billing/sa/api";
pub const FRONTEND_ID: &str = "spiffe://example.org/ns/shop/sa/frontend";
pub const REPORTS_ID: &str = "spiffe://example.org/ns/analytics/sa/reports";

/// A policy that lets the frontend workload do anything.
pub const ALLOW_ALL_FRONTEND: &str = r#"
[[rule]]
name = "frontend-all"
action = "allow"
from = ["spiffe://example.org/ns/shop/sa/frontend"]
"#;

/// A CA and a temp directory holding its bundle and the certs issued for a test.
pub struct Pki {
    pub ca: DevCa,
    pub dir: TempDir,
}

impl Pki {
    pub fn new(trust_domain: &str) -> Self {
        let pki = Self {
            ca: DevCa::new(trust_domain).expect("dev CA"),
            dir: tempfile::tempdir().expect("temp dir"),
        };
        std::fs::write(pki.bundle(), pki.ca.root_pem()).expect("write bundle");
        pki
    }

    pub fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle.pem")
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// An SVID for `id` that also names `localhost` (so plain rustls clients can verify it).
    pub fn svid(&self, id: &str) -> IssuedCert {
        let mut spec = LeafSpec::svid(&SpiffeId::parse(id).expect("test ID"));
        spec.dns = vec!["localhost".into()];
        self.ca.issue(&spec).expect("issue SVID")
    }

    /// Issues `spec` and writes `NAME.pem` and `NAME-key.pem`.
    pub fn write(&self, name: &str, cert: &IssuedCert) -> (PathBuf, PathBuf) {
        let (c, k) = (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}-key.pem")),
        );
        std::fs::write(&c, &cert.chain_pem).expect("write cert");
        std::fs::write(&k, &cert.key_pem).expect("write key");
        (c, k)
    }

    /// The `[identity]` table for a files identity `name` with an SVID for `id`.
    pub fn identity_toml(&self, name: &str, id: &str) -> String {
        let (cert, key) = self.write(name, &self.svid(id));
        format!(
            "[identity]\nsource = \"files\"\ncert = {cert:?}\nkey = {key:?}\nbundle = {bundle:?}\n",
            bundle = self.bundle()
        )
    }

    /// `name`'s identity (an SVID for `id`) and one `[[outbound]]` listener, `to-api`, to
    /// `target`, expecting one of `server_ids`.
    pub fn outbound_toml(
        &self,
        name: &str,
        id: &str,
        target: SocketAddr,
        server_ids: &[&str],
    ) -> String {
        format!(
            "{}\n[[outbound]]\nname = \"to-api\"\nlisten = \"127.0.0.1:0\"\ntarget = \"{target}\"\nserver_ids = {server_ids:?}\n",
            self.identity_toml(name, id)
        )
    }
}

/// A sidecar running in this process from a real config file.
pub struct Sidecar {
    pub app: App,
    pub decisions: PathBuf,
}

impl Sidecar {
    /// Writes `toml` (plus admin on port 0 and a decision log file) and starts it.
    pub async fn start(dir: &Path, name: &str, toml: &str) -> Self {
        let decisions = dir.join(format!("{name}-decisions.log"));
        let text = format!(
            "{toml}\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\ndecisions = {decisions:?}\n"
        );
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("write config");
        let config = Config::load(&path).unwrap_or_else(|e| panic!("config {name}: {e}"));
        let app = app::start(config)
            .await
            .unwrap_or_else(|e| panic!("start {name}: {e:#}"));
        Self { app, decisions }
    }

    pub fn inbound(&self) -> SocketAddr {
        self.app.inbound[0]
    }

    pub fn outbound(&self) -> SocketAddr {
        self.app.outbound[0]
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.outbound())
    }

    /// Waits for the decision line of `request_id` (lines reach the file within 1 s).
    pub async fn decision(&self, request_id: &str) -> serde_json::Value {
        for _ in 0..60 {
            if let Ok(text) = tokio::fs::read_to_string(&self.decisions).await {
                let found = text
                    .lines()
                    .map(|l| {
                        serde_json::from_str::<serde_json::Value>(l).expect("decision line is JSON")
                    })
                    .find(|v| v["request_id"] == request_id);
                if let Some(found) = found {
                    return found;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no decision line for {request_id} in {}",
            self.decisions.display()
        );
    }

    /// Waits for at least `n` decision lines and returns them all.
    pub async fn decision_lines(&self, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..60 {
            let text = tokio::fs::read_to_string(&self.decisions)
                .await
                .unwrap_or_default();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).expect("decision line is JSON"))
                .collect();
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "fewer than {n} decision lines in {}",
            self.decisions.display()
        );
    }

    /// GET on the admin endpoint.
    pub async fn admin(&self, path: &str) -> Reply {
        send(
            &plain_client(),
            "GET",
            &format!("http://{}{path}", self.app.admin),
            &[],
            Bytes::new(),
        )
        .await
    }
}

/// A server sidecar (inbound, policy given) in front of the echo app, and the PKI behind it.
pub struct Mesh {
    pub pki: Pki,
    pub server: Sidecar,
}

impl Mesh {
    pub async fn start(policy: &str) -> Self {
        Self::start_with(policy, "").await
    }

    /// Like [`Mesh::start`], with extra keys for the `[[inbound]]` table.
    pub async fn start_with(policy: &str, inbound_extra: &str) -> Self {
        let echo = idgate::cli::echo::spawn(([127, 0, 0, 1], 0).into())
            .await
            .expect("echo");
        Self::start_upstream(policy, &format!("http://{echo}"), inbound_extra).await
    }

    /// A TCP inbound listener in front of `upstream` (`tcp://` or `unix://`).
    pub async fn start_tcp(policy: &str, upstream: &str) -> Self {
        Self::start_upstream(policy, upstream, "protocol = \"tcp\"").await
    }

    /// The server sidecar in front of any upstream, with extra `[[inbound]]` keys.
    pub async fn start_upstream(policy: &str, upstream: &str, inbound_extra: &str) -> Self {
        let pki = Pki::new(TD);
        std::fs::write(pki.path("policy.toml"), policy).expect("write policy");
        let toml = format!(
            "{}\n[[inbound]]\nname = \"api\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\npolicy = \"policy.toml\"\n{inbound_extra}\n",
            pki.identity_toml("server", SERVER_ID)
        );
        let server = Sidecar::start(pki.dir.path(), "server", &toml).await;
        Self { pki, server }
    }

    /// A client workload `id` with an outbound listener to the server expecting `server_ids`.
    pub async fn client(&self, name: &str, id: &str, server_ids: &[&str]) -> Sidecar {
        self.client_with(name, id, server_ids, "").await
    }

    /// Like [`Mesh::client`], with extra keys for the `[[outbound]]` table.
    pub async fn client_with(
        &self,
        name: &str,
        id: &str,
        server_ids: &[&str],
        extra: &str,
    ) -> Sidecar {
        let outbound = self
            .pki
            .outbound_toml(name, id, self.server.inbound(), server_ids);
        let toml = format!("{outbound}{extra}\n");
        Sidecar::start(self.pki.dir.path(), name, &toml).await
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The echo app's report of the request it received.
    pub fn echoed(&self) -> serde_json::Value {
        let header = self
            .headers
            .get("x-echo-request")
            .expect("response came from the echo app");
        serde_json::from_slice(header.as_bytes()).expect("echo report is JSON")
    }
}

pub fn plain_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    let mut request = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = client
        .request(request.body(Full::new(body)).expect("request"))
        .await
        .expect("request sent");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// GET through a plain HTTP/1.1 client.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send(&plain_client(), "GET", url, headers, Bytes::new()).await
}

/// A rustls client presenting `client` (or nothing), trusting `ca_pem`, verifying `localhost`.
pub fn tls_client(
    ca_pem: &str,
    client: Option<&IssuedCert>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("add root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(idgate::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut config = match client {
        Some(c) => builder
            .with_client_auth_cert(c.chain_der.clone(), c.key_der.clone_key())
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A policy of `rules` rules (`default = "deny"`), each for a source and a path of its
/// own: big enough to take memory and compile time that show.
pub fn many_rules_policy(rules: usize) -> String {
    let mut policy = String::from("default = \"deny\"\n");
    for i in 0..rules {
        policy.push_str(&format!(
            "\n[[rule]]\nname = \"rule-{i}\"\naction = \"allow\"\nfrom = [\"spiffe://{TD}/ns/team{i}/sa/app{i}\"]\npaths = [\"/api/v1/items{i}/*\"]\n"
        ));
    }
    policy
}

/// One request straight to an inbound listener over mTLS; `Err` when the handshake or
/// the request fails.
pub async fn mtls_send(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let tls = mtls_connect(addr, config).await?;
    mtls_send_on(tls, method, path, headers).await
}

/// One request on an established mTLS connection (HTTP/2 when ALPN chose it).
pub async fn mtls_send_on(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let mut request = Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(Full::new(Bytes::new())).expect("request");
    let io = TokioIo::new(tls);
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(request).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("h1 handshake: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(request).await
    }
    .map_err(|e| format!("request: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// A TLS connection to `addr`, verifying the server as `localhost`.
pub async fn mtls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    // As real clients do: without it, Nagle holds the request behind the handshake's
    // last flight until the delayed ACK (40 ms).
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))
}

/// A bodiless request for `path` on an mTLS connection to `localhost`.
pub fn empty_get(path: &str) -> Request<http_body_util::Empty<Bytes>> {
    Request::get(format!("https://localhost{path}"))
        .body(http_body_util::Empty::new())
        .expect("request")
}

/// The task driving a client connection: it ends when the connection closes.
pub type ConnectionTask = tokio::task::JoinHandle<hyper::Result<()>>;

/// An HTTP/1.1 client connection over mTLS to `addr`.
pub async fn h1_connection(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> (
    hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>,
    ConnectionTask,
) {
    let tls = mtls_connect(addr, config).await.expect("mTLS connection");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 handshake");
    (sender, tokio::spawn(connection))
}

/// An HTTP/2 client connection over mTLS to `addr`.
pub async fn h2_connection(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    ConnectionTask,
) {
    let tls = mtls_connect(addr, config).await.expect("mTLS connection");
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
    (sender, tokio::spawn(connection))
}

/// A TLS server presenting `server`'s chain, offering `alpn`, asking for no client
/// certificate (a stand-in peer sidecar that a test reads or answers by hand).
pub fn tls_acceptor(server: &IssuedCert, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    let mut config = rustls::ServerConfig::builder_with_provider(idgate::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(server.chain_der.clone(), server.key_der.clone_key())
        .expect("server cert");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// A peer that is not idgate: HTTP/2 over TLS as `SERVER_ID` on a free loopback port, each
/// connection served by `http2` (its settings) with `service`.
pub async fn tls_http2_peer<S, B>(
    pki: &Pki,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    service: S,
) -> SocketAddr
where
    S: hyper::service::Service<Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let acceptor = tls_acceptor(&pki.svid(SERVER_ID), &[b"h2"]);
    let (addr, _) = counting_server(move |tcp| {
        let (acceptor, http2, service) = (acceptor.clone(), http2.clone(), service.clone());
        async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let _ = http2.serve_connection(TokioIo::new(stream), service).await;
        }
    })
    .await;
    addr
}

/// A listener on a free loopback port that hands each accepted connection to `serve` on a
/// task of its own; returns its address and the number of connections it has accepted.
pub async fn counting_server<F, Fut>(serve: F) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream));
        }
    });
    (addr, accepted)
}

/// A TCP echo server (it half-closes after the client does); counts the connections it accepted.
pub async fn tcp_echo() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::AsyncWriteExt;
    counting_server(|stream| async move {
        let (mut r, mut w) = stream.into_split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// Reads one counter sample from `/metrics` text, 0 when absent.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// An app (HTTP/1.1) that reads each request's whole body before it answers (200, the
/// body's length); it sends each request's `x-request-id` to the receiver as soon as the
/// request's head has arrived.
pub async fn body_reading_app() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (heads, arrived) = tokio::sync::mpsc::unbounded_channel();
    let (addr, _) = counting_server(move |tcp| {
        let heads = heads.clone();
        async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let id = request
                        .headers()
                        .get("x-request-id")
                        .map(|v| v.to_str().unwrap_or_default().to_owned());
                    let _ = heads.send(id.unwrap_or_default());
                    async move {
                        let body = request.into_body().collect().await?.to_bytes();
                        Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::from(
                            body.len().to_string(),
                        ))))
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        }
    })
    .await;
    (addr, arrived)
}

/// Writes an HTTP/1.1 request head for `id` announcing a 1,000-byte body and 10 bytes of
/// it on `stream`, waits until `app` has the request, then closes the connection.
pub async fn leave_mid_body<S>(
    stream: S,
    id: &str,
    app: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
) where
    S: tokio::io::AsyncWrite + Unpin,
{
    drop(stop_mid_body(stream, id, app).await);
}

/// Writes an HTTP/1.1 request head for `id` announcing a 1,000-byte body and 10 bytes of
/// it on `stream`, waits until `app` has the request, and returns the stream, silent.
pub async fn stop_mid_body<S>(
    mut stream: S,
    id: &str,
    app: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
) -> S
where
    S: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: app\r\nx-request-id: {id}\r\ncontent-length: 1000\r\n\r\n0123456789"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.flush().await.expect("flush");
    assert_eq!(
        app.recv().await.as_deref(),
        Some(id),
        "the app got another request"
    );
    stream
}
