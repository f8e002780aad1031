//! Pooled connections to the peer sidecar: its HTTP/2 stream limit, its GOAWAY, and its
//! certificate's expiry. Client -> outbound -> mTLS -> a peer that allows 2 streams per
//! connection (a hyper server in the test), a peer that answers with GOAWAY (raw frames),
//! or an inbound sidecar whose SVID expires in a few seconds.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
use support::frames::*;
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

/// A peer speaking HTTP/2 over TLS (as `SERVER_ID`) in raw frames. On its first
/// connection it answers the first request with GOAWAY (error code `code`), whose
/// last-stream-id is the request's stream if `processed` (the peer may have acted on it),
/// else the one below it (it did not), then closes; on later connections it answers the
/// first request 200. Returns its address and the number of connections it accepted.
async fn going_away_peer(pki: &Pki, processed: bool, code: u32) -> (SocketAddr, Arc<AtomicUsize>) {
    let acceptor = tls_acceptor(&pki.svid(SERVER_ID), &[b"h2"]);
    let first = Arc::new(AtomicBool::new(true));
    counting_server(move |tcp| {
        let (acceptor, first) = (acceptor.clone(), first.clone());
        async move {
            let Ok(mut stream) = acceptor.accept(tcp).await else {
                return;
            };
            let mut preface = [0u8; 24];
            stream.read_exact(&mut preface).await.expect("preface");
            assert_eq!(&preface, &CLIENT_PREFACE[..24]);
            write_frame(&mut stream, SETTINGS, 0, 0, &[]).await;
            let request = next_headers(&mut stream).await;
            if first.swap(false, Ordering::SeqCst) {
                let last = if processed {
                    request.stream
                } else {
                    request.stream - 1
                };
                let mut payload = last.to_be_bytes().to_vec();
                payload.extend_from_slice(&code.to_be_bytes());
                write_frame(&mut stream, GOAWAY, 0, 0, &payload).await;
                let _ = stream.shutdown().await;
            } else {
                answer_200(&mut stream, request.stream).await;
            }
            // Read until the outbound closes: closing with its frames unread could reset
            // the connection before it has read ours.
            let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
        }
    })
    .await
}

/// A GET through an outbound to [`going_away_peer`]`(processed, code)`: its status, and
/// the connections the peer accepted.
async fn get_through_going_away_peer(processed: bool, code: u32) -> (u16, usize) {
    let pki = Pki::new(TD);
    let (peer, accepted) = going_away_peer(&pki, processed, code).await;
    let client = outbound_to(&pki, peer, "5s").await;
    let reply = get(&client.url("/"), &[]).await;
    (reply.status.as_u16(), accepted.load(Ordering::SeqCst))
}

#[tokio::test]
async fn a_request_above_a_goaways_last_stream_id_is_sent_again() {
    for code in [NO_ERROR, INTERNAL_ERROR] {
        assert_eq!(
            get_through_going_away_peer(false, code).await,
            (200, 2),
            "error code {code}: the peer never processed the request, sent again on a new connection"
        );
    }
}

#[tokio::test]
async fn a_request_a_goaway_says_may_have_been_processed_is_not_sent_again() {
    for code in [NO_ERROR, INTERNAL_ERROR] {
        assert_eq!(
            get_through_going_away_peer(true, code).await,
            (502, 1),
            "error code {code}: the connection closed under a request the peer may have processed"
        );
    }
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
