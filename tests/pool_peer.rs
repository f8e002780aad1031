//! Pooled connections to the peer sidecar: its HTTP/2 stream limit and its certificate's
//! expiry. Client -> outbound -> mTLS -> a peer that allows 2 streams per connection (a
//! hyper server in the test), or an inbound sidecar whose SVID expires in a few seconds.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::TokioExecutor;
use idgate::devpki::LeafSpec;
use idgate::spiffe_id::SpiffeId;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A peer speaking HTTP/2 over TLS (as `SERVER_ID`) that allows `streams` concurrent
/// streams per connection; `/sleep/MS` answers 200 after MS milliseconds.
async fn limited_peer(pki: &Pki, streams: u32) -> SocketAddr {
    let service = service_fn(|request: Request<Incoming>| async move {
        let millis = request
            .uri()
            .path()
            .strip_prefix("/sleep/")
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(millis)).await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
    });
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2.max_concurrent_streams(streams);
    tls_http2_peer(pki, http2, service).await
}

/// An outbound sidecar to `peer` whose response timeout is `response`.
async fn outbound_to(pki: &Pki, peer: SocketAddr, response: &str) -> Arc<Sidecar> {
    let toml = format!(
        "{}timeouts = {{ response = \"{response}\" }}\n",
        pki.outbound_toml("frontend", FRONTEND_ID, peer, &[SERVER_ID])
    );
    Arc::new(Sidecar::start(pki.dir.path(), "frontend", &toml).await)
}

/// GETs `path` through `client` `n` times at once; the statuses.
async fn at_once(client: &Arc<Sidecar>, path: &str, n: usize) -> Vec<u16> {
    let requests: Vec<_> = (0..n)
        .map(|_| {
            let url = client.url(path);
            tokio::spawn(async move { get(&url, &[]).await.status.as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.expect("request task"));
    }
    statuses
}

#[tokio::test]
async fn requests_beyond_the_peers_stream_limit_open_another_connection() {
    let pki = Pki::new(TD);
    let peer = limited_peer(&pki, 2).await;
    let client = outbound_to(&pki, peer, "4s").await;
    // The pool's connection is open and has learned the peer's limit.
    assert_eq!(at_once(&client, "/sleep/0", 1).await, [200]);
    let started = Instant::now();
    let statuses = at_once(&client, "/sleep/1500", 6).await;
    let took = started.elapsed();
    assert_eq!(
        statuses, [200; 6],
        "six slow requests, two streams per connection"
    );
    // Two at a time on one connection would take 4.5 s (the last ones time out at 4 s).
    assert!(took < Duration::from_millis(3000), "took {took:?}");
}

#[tokio::test]
async fn a_burst_on_a_fresh_connection_beyond_the_peers_limit_is_not_refused() {
    let pki = Pki::new(TD);
    let peer = limited_peer(&pki, 2).await;
    let client = outbound_to(&pki, peer, "10s").await;
    // Sent before the peer's SETTINGS arrive: the excess is refused and must be resent.
    let statuses = at_once(&client, "/sleep/200", 10).await;
    assert_eq!(statuses, [200; 10]);
}

/// `SERVER_ID`'s identity table with an SVID that expires `seconds` from now.
fn expiring_identity(pki: &Pki, seconds: i64) -> String {
    let mut spec = LeafSpec::svid(&SpiffeId::parse(SERVER_ID).expect("ID"))
        .valid_for(time::Duration::seconds(seconds));
    spec.dns = vec!["localhost".into()];
    let (cert, key) = pki.write("server", &pki.ca.issue(&spec).expect("issue"));
    format!(
        "[identity]\nsource = \"files\"\ncert = {cert:?}\nkey = {key:?}\nbundle = {:?}\n",
        pki.bundle()
    )
}

/// A server sidecar whose SVID expires in `seconds`, its inbound in front of `upstream`
/// with extra keys `extra`; returns it and when its SVID expires.
async fn expiring_server(
    pki: &Pki,
    seconds: i64,
    upstream: &str,
    extra: &str,
) -> (Sidecar, Instant) {
    std::fs::write(pki.path("policy.toml"), ALLOW_ALL_FRONTEND).expect("policy");
    // Certificates count whole seconds: the expiry is within a second of this.
    let expires = Instant::now() + Duration::from_secs(seconds as u64);
    let toml = format!(
        "{}\n[[inbound]]\nname = \"api\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\npolicy = \"policy.toml\"\n{extra}\n",
        expiring_identity(pki, seconds)
    );
    (
        Sidecar::start(pki.dir.path(), "server", &toml).await,
        expires,
    )
}

#[tokio::test]
async fn a_pooled_connection_is_not_used_after_the_peers_certificate_expires() {
    let pki = Pki::new(TD);
    let echo = idgate::cli::echo::spawn(([127, 0, 0, 1], 0).into())
        .await
        .expect("echo");
    let (server, expires) = expiring_server(&pki, 3, &format!("http://{echo}"), "").await;
    let client = outbound_to(&pki, server.inbound(), "5s").await;
    let before = get(&client.url("/before"), &[]).await;
    assert_eq!(before.status, 200, "{}", before.text());
    tokio::time::sleep_until((expires + Duration::from_millis(1500)).into()).await;
    // A fresh handshake is refused (the certificate has expired): so is the old connection.
    let after = get(&client.url("/after"), &[]).await;
    assert_eq!(after.status, 502, "{}", after.text());
}

#[tokio::test]
async fn an_outbound_tcp_relay_closes_when_the_peers_certificate_expires() {
    let pki = Pki::new(TD);
    let (echo, _) = tcp_echo().await;
    let (server, expires) =
        expiring_server(&pki, 3, &format!("tcp://{echo}"), "protocol = \"tcp\"").await;
    let toml = format!(
        "{}protocol = \"tcp\"\n",
        pki.outbound_toml("frontend", FRONTEND_ID, server.inbound(), &[SERVER_ID])
    );
    let client = Sidecar::start(pki.dir.path(), "frontend", &toml).await;
    let mut relay = tokio::net::TcpStream::connect(client.outbound())
        .await
        .expect("connect");
    relay.write_all(b"ping").await.expect("write");
    let mut echoed = [0u8; 4];
    relay.read_exact(&mut echoed).await.expect("echo");
    assert_eq!(&echoed, b"ping");
    // Closed at the expiry (within the second certificates count in), not left open.
    let mut rest = Vec::new();
    let read = tokio::time::timeout_at(
        (expires + Duration::from_secs(3)).into(),
        relay.read_to_end(&mut rest),
    )
    .await;
    assert!(
        read.is_ok(),
        "the relay was still open 3 s after the peer's certificate expired"
    );
    let closed = Instant::now();
    assert!(
        closed + Duration::from_millis(1100) >= expires,
        "closed {:?} before the expiry",
        expires - closed
    );
}
