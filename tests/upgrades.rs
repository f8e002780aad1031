//! Traffic beyond plain request/response: WebSocket upgrades, gRPC-style HTTP/2 with
//! trailers, and HTTP/1.1 trailers.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use idgate::devpki::LeafSpec;
use idgate::spiffe_id::SpiffeId;
use support::*;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const POLICY: &str = r#"
[[rule]]
name = "frontend-ws"
action = "allow"
from = ["spiffe://example.org/ns/shop/sa/frontend"]
paths = ["/ws", "/pkg.Echo/*"]
"#;

/// A WebSocket echo server.
async fn ws_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_through_both_sidecars() {
    let echo = ws_echo().await;
    let mesh = Mesh::start_upstream(POLICY, &format!("http://{echo}"), "").await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let (mut ws, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws", client.outbound()))
            .await
            .expect("WebSocket handshake through the sidecars");
    assert_eq!(response.status(), 101);
    for i in 0..20 {
        let text = format!("hello {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.close(None).await.unwrap();
    let denied =
        tokio_tungstenite::connect_async(format!("ws://{}/other", client.outbound())).await;
    match denied {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("an upgrade to a denied path must get 403, got {other:?}"),
    }
}

/// An h2c server answering like a gRPC service: data, then `grpc-status` in trailers.
async fn grpc_like_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                    let body = request
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    trailers.insert("grpc-message", "ok".parse().unwrap());
                    let frames = vec![
                        Ok::<_, Infallible>(Frame::data(body)),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let response = Response::builder()
                        .header("content-type", "application/grpc")
                        .body(StreamBody::new(futures_util::stream::iter(frames)))
                        .unwrap();
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn grpc_over_http2_keeps_trailers_end_to_end() {
    let app = grpc_like_server().await;
    let mesh = Mesh::start_upstream(POLICY, &format!("http://{app}"), "").await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let request = Request::post(client.url("/pkg.Echo/Say"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x05hello")))
        .unwrap();
    let response = h2c_client().request(request).await.expect("gRPC call");
    assert_eq!(response.status(), 200);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers must survive both sidecars");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(
        collected.to_bytes(),
        Bytes::from_static(b"\0\0\0\0\x05hello")
    );

    let denied = Request::post(client.url("/pkg.Other/Say"))
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = h2c_client().request(denied).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["grpc-status"], "7");
}

/// `data`, then `trailers`.
fn with_trailers(data: &'static [u8], trailers: HeaderMap) -> BoxBody<Bytes, Infallible> {
    let frames = vec![
        Ok(Frame::data(Bytes::from_static(data))),
        Ok(Frame::trailers(trailers)),
    ];
    BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
}

/// An HTTP/1.1 app answering `hello` and two trailers, declared in `Trailer` as HTTP/1.1
/// requires: `x-checksum: abc`, and `x-got` with the request's `x-sent` trailer.
async fn trailers_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                    let received = request.into_body().collect().await.ok();
                    let sent = received.and_then(|body| body.trailers()?.get("x-sent").cloned());
                    let mut trailers = HeaderMap::new();
                    trailers.insert("x-checksum", HeaderValue::from_static("abc"));
                    trailers.insert("x-got", sent.unwrap_or(HeaderValue::from_static("none")));
                    let response = Response::builder()
                        .header("trailer", "x-checksum, x-got")
                        .body(with_trailers(b"hello", trailers))
                        .unwrap();
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Sends a request with an `x-sent: 123` trailer on `io` (HTTP/2 or HTTP/1.1); the
/// response's body and its trailers.
async fn exchange_trailers<IO>(io: IO, http2: bool) -> (Bytes, HeaderMap)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut sent = HeaderMap::new();
    sent.insert("x-sent", HeaderValue::from_static("123"));
    let request = Request::post("https://localhost/t")
        .header("te", "trailers")
        .header("trailer", "x-sent")
        .body(with_trailers(b"ping", sent))
        .unwrap();
    let io = TokioIo::new(io);
    let response = if http2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(connection);
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        sender.send_request(request).await.unwrap()
    };
    assert_eq!(response.status(), 200);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    (collected.to_bytes(), trailers)
}

#[tokio::test]
async fn http1_trailers_pass_both_ways() {
    // HTTP/1.1 sends only the trailers its `Trailer` header declares, so that header must
    // reach the app (request) and the client (response).
    let app = trailers_app().await;
    let mesh = Mesh::start_upstream(ALLOW_ALL_FRONTEND, &format!("http://{app}"), "").await;
    let cert = mesh.pki.svid(FRONTEND_ID);
    let expect = |(body, trailers): (Bytes, HeaderMap), what: &str| {
        assert_eq!(body, "hello", "{what}");
        assert_eq!(
            trailers.get("x-checksum").map(|v| v.as_bytes()),
            Some(&b"abc"[..]),
            "{what}: {trailers:?}"
        );
        assert_eq!(
            trailers.get("x-got").map(|v| v.as_bytes()),
            Some(&b"123"[..]),
            "{what}: {trailers:?}"
        );
    };
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let config = tls_client(&mesh.pki.ca.root_pem(), Some(&cert), &[alpn]);
        let tls = mtls_connect(mesh.server.inbound(), config).await.unwrap();
        let what = String::from_utf8_lossy(alpn);
        expect(exchange_trailers(tls, alpn == b"h2").await, &what);
    }
    // Through both sidecars (HTTP/2 between them), from an HTTP/1.1 app client.
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let tcp = tokio::net::TcpStream::connect(client.outbound())
        .await
        .unwrap();
    expect(exchange_trailers(tcp, false).await, "through the outbound");
}

#[tokio::test]
async fn a_reload_closes_websockets_it_no_longer_allows() {
    let echo = ws_echo().await;
    let mesh = Mesh::start_upstream(POLICY, &format!("http://{echo}"), "").await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", client.outbound()))
        .await
        .unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(
        ws.next()
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        "before"
    );
    let policy = mesh.pki.path("policy.toml");
    let tmp = policy.with_extension("tmp");
    std::fs::write(&tmp, POLICY.replace("\"/ws\", ", "")).unwrap();
    std::fs::rename(&tmp, &policy).unwrap();
    assert!(
        ends_within(&mut ws, Duration::from_secs(3)).await,
        "the WebSocket must be closed once the policy no longer allows /ws"
    );
}

/// Whether `ws` ends (closed, reset or a close frame) within `within`.
async fn ends_within<S>(ws: &mut S, within: Duration) -> bool
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let ended = tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(m)) if m.is_close() => return,
                Some(Ok(_)) => {}
            }
        }
    });
    ended.await.is_ok()
}

/// Sends `text` on `ws` and checks it comes back: the tunnel is running.
async fn round_trip<S>(ws: &mut S, text: &str)
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error>
        + futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    ws.send(Message::text(text)).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), text);
}

/// A WebSocket straight to the inbound of `mesh`, presenting `cert`, checked to be running.
async fn open_websocket(
    mesh: &Mesh,
    cert: &idgate::devpki::IssuedCert,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let config = tls_client(&mesh.pki.ca.root_pem(), Some(cert), &[b"http/1.1"]);
    let tls = mtls_connect(mesh.server.inbound(), config).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("ws://localhost/ws", tls)
        .await
        .expect("WebSocket handshake");
    round_trip(&mut ws, "hello").await;
    ws
}

/// A WebSocket through a frontend outbound (its listener configured with `extra`) and
/// `mesh`'s inbound, after one round trip; the outbound lives as long as the second value.
async fn open_websocket_through_outbound(
    mesh: &Mesh,
    extra: &str,
) -> (
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Sidecar,
) {
    let client = mesh
        .client_with("frontend", FRONTEND_ID, &[SERVER_ID], extra)
        .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", client.outbound()))
        .await
        .expect("WebSocket handshake through the sidecars");
    round_trip(&mut ws, "hello").await;
    (ws, client)
}

#[tokio::test]
async fn a_websocket_keeps_its_connection_slot_and_ends_at_the_maximum_age() {
    let echo = ws_echo().await;
    let limits = "limits = { max_connection_age = \"1s\", max_connections = 1 }";
    let mesh = Mesh::start_upstream(POLICY, &format!("http://{echo}"), limits).await;
    let cert = mesh.pki.svid(FRONTEND_ID);
    let config = tls_client(&mesh.pki.ca.root_pem(), Some(&cert), &[b"http/1.1"]);
    let tls = mtls_connect(mesh.server.inbound(), config.clone())
        .await
        .unwrap();
    let opened = Instant::now();
    let (mut ws, _) = tokio_tungstenite::client_async("ws://localhost/ws", tls)
        .await
        .expect("WebSocket handshake");
    round_trip(&mut ws, "hello").await;
    // The HTTP server is done with the connection, but the tunnel is still it.
    let second = mtls_send(mesh.server.inbound(), config.clone(), "GET", "/ws", &[]).await;
    assert!(second.is_err(), "a second connection got in: {second:?}");
    assert!(
        ends_within(&mut ws, Duration::from_secs(3)).await,
        "the tunnel outlived max_connection_age"
    );
    assert!(
        opened.elapsed() > Duration::from_millis(800),
        "{:?}",
        opened.elapsed()
    );
    let mut admitted = false;
    for _ in 0..40 {
        if mtls_send(mesh.server.inbound(), config.clone(), "GET", "/ws", &[])
            .await
            .is_ok()
        {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(admitted, "the tunnel's slot frees up when it ends");
}

#[tokio::test]
async fn a_websocket_ends_when_the_peer_certificate_expires() {
    let echo = ws_echo().await;
    let mesh = Mesh::start_upstream(POLICY, &format!("http://{echo}"), "").await;
    let mut spec = LeafSpec::svid(&SpiffeId::parse(FRONTEND_ID).unwrap());
    spec.dns = vec!["localhost".into()];
    spec.not_after = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let cert = mesh.pki.ca.issue(&spec).unwrap();
    let mut ws = open_websocket(&mesh, &cert).await;
    assert!(
        ends_within(&mut ws, Duration::from_secs(5)).await,
        "the tunnel outlived the peer certificate"
    );
}

#[tokio::test]
async fn a_websocket_through_the_outbound_ends_at_its_maximum_age() {
    let echo = ws_echo().await;
    let mesh = Mesh::start_upstream(POLICY, &format!("http://{echo}"), "").await;
    let age = "limits = { max_connection_age = \"1s\" }";
    let (mut ws, _client) = open_websocket_through_outbound(&mesh, age).await;
    assert!(
        ends_within(&mut ws, Duration::from_secs(3)).await,
        "the tunnel outlived the outbound's max_connection_age"
    );
}

/// Keeps `ws` busy for more than twice the 1 s `body` timeout (a round trip every 300 ms),
/// then goes quiet: the tunnel must outlive the busy spell and close about 1 s into the
/// quiet one.
async fn busy_then_quiet<S>(ws: &mut S)
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error>
        + futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        round_trip(ws, &format!("busy {i}")).await;
    }
    let quiet = Instant::now();
    assert!(
        ends_within(ws, Duration::from_secs(4)).await,
        "the tunnel outlived the body timeout (1 s) without a byte either way"
    );
    let silence = quiet.elapsed();
    assert!(
        silence >= Duration::from_millis(900),
        "closed {silence:?} into the silence, before the body timeout (1 s)"
    );
}

#[tokio::test]
async fn a_websocket_silent_for_the_inbound_body_timeout_is_closed() {
    let echo = ws_echo().await;
    let body = "timeouts = { body = \"1s\" }";
    let mesh = Mesh::start_upstream(POLICY, &format!("http://{echo}"), body).await;
    let mut ws = open_websocket(&mesh, &mesh.pki.svid(FRONTEND_ID)).await;
    busy_then_quiet(&mut ws).await;
}

#[tokio::test]
async fn a_websocket_through_the_sidecars_silent_for_the_outbound_body_timeout_is_closed() {
    let echo = ws_echo().await;
    // The inbound keeps the default (5 minutes): the outbound's tunnel closes it.
    let mesh = Mesh::start_upstream(POLICY, &format!("http://{echo}"), "").await;
    let body = "timeouts = { body = \"1s\" }";
    let (mut ws, _client) = open_websocket_through_outbound(&mesh, body).await;
    busy_then_quiet(&mut ws).await;
}

/// An app that switches protocols for any upgrade request it receives (as an h2c server
/// does), then echoes bytes; a request without one gets a plain 200.
async fn switching_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let asked = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if asked.contains("\r\nupgrade:") {
                    let switch = "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n";
                    let _ = stream.write_all(switch.as_bytes()).await;
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                } else {
                    let ok = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplain";
                    let _ = stream.write_all(ok.as_bytes()).await;
                }
            });
        }
    });
    addr
}

/// A tunnel is judged once; one that carried HTTP (h2c) would let every later request on
/// it past the policy. Only WebSocket upgrades reach the app: an `Upgrade: h2c` request is
/// forwarded as a plain request, even to an app that would switch.
#[tokio::test]
async fn only_websocket_upgrades_reach_the_app() {
    let app = switching_app().await;
    let mesh = Mesh::start_upstream(ALLOW_ALL_FRONTEND, &format!("http://{app}"), "").await;
    let cert = mesh.pki.svid(FRONTEND_ID);
    let config = tls_client(&mesh.pki.ca.root_pem(), Some(&cert), &[b"http/1.1"]);
    let h2c = [
        ("connection", "Upgrade, HTTP2-Settings"),
        ("upgrade", "h2c"),
        ("http2-settings", "AAMAAABkAAQAAP__"),
    ];
    let reply = mtls_send(mesh.server.inbound(), config.clone(), "GET", "/x", &h2c)
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "plain");
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let request = "GET /x HTTP/1.1\r\nhost: billing\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n";
    let mut tcp = tokio::net::TcpStream::connect(client.outbound())
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "through the outbound: {answer}"
    );
}

#[tokio::test]
async fn a_websocket_ends_when_the_break_glass_rule_that_allowed_it_expires() {
    let echo = ws_echo().await;
    let lifetime = Duration::from_secs(2);
    let expires = (time::OffsetDateTime::now_utc() + lifetime)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let expires_at = Instant::now() + lifetime;
    let policy = format!("{POLICY}expires = \"{expires}\"\n");
    let mesh = Mesh::start_upstream(&policy, &format!("http://{echo}"), "").await;
    let mut ws = open_websocket(&mesh, &mesh.pki.svid(FRONTEND_ID)).await;
    assert!(Instant::now() < expires_at, "the test set up too slowly");
    let within = expires_at + Duration::from_secs(5) - Instant::now();
    assert!(
        ends_within(&mut ws, within).await,
        "the tunnel outlived the break-glass rule that allowed it"
    );
    assert!(
        Instant::now() + Duration::from_millis(50) >= expires_at,
        "closed before the rule expired"
    );
}
