//! End to end: client -> outbound -> mTLS -> inbound -> echo app, over HTTP/1.1 and HTTP/2.

mod support;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use support::*;

fn leaf_sha256(pem: &str) -> String {
    use rustls_pki_types::pem::PemObject;
    let leaf = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .expect("a cert")
        .expect("valid PEM");
    hex::encode(Sha256::digest(leaf.as_ref()))
}

#[tokio::test]
async fn http1_through_both_sidecars_sets_xfcc_and_drops_spoofed_one() {
    let mesh = Mesh::start(ALLOW_ALL_FRONTEND).await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let reply = get(
        &client.url("/api/invoices?x=1"),
        &[
            (
                "x-forwarded-client-cert",
                "URI=spiffe://example.org/ns/admin/sa/root",
            ),
            ("x-request-id", "e2e-1"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let echoed = reply.echoed();
    assert_eq!(echoed["path"], "/api/invoices");
    assert_eq!(echoed["query"], "x=1");
    let xfcc = echoed["headers"]["x-forwarded-client-cert"]
        .as_array()
        .expect("one XFCC header");
    assert_eq!(xfcc.len(), 1, "spoofed XFCC must be removed: {xfcc:?}");
    let cert = std::fs::read_to_string(mesh.pki.path("frontend.pem")).unwrap();
    let expected = format!(
        "By={SERVER_ID};Hash={};URI={FRONTEND_ID}",
        leaf_sha256(&cert)
    );
    assert_eq!(xfcc[0], expected.as_str());
    assert_eq!(echoed["headers"]["x-request-id"][0], "e2e-1");

    let line = mesh.server.decision("e2e-1").await;
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["rule"], "frontend-all");
    assert_eq!(line["source"], FRONTEND_ID);
    assert_eq!(line["destination"], SERVER_ID);
    assert_eq!(line["direction"], "inbound");
    assert_eq!(line["status"], 200);
    let outbound_line = client.decision("e2e-1").await;
    assert_eq!(outbound_line["direction"], "outbound");
    assert_eq!(outbound_line["destination"], SERVER_ID);
}

#[tokio::test]
async fn a_connection_header_cannot_remove_the_headers_idgate_adds() {
    let mesh = Mesh::start(ALLOW_ALL_FRONTEND).await;
    // A peer (HTTP/1.1, straight to the inbound) names XFCC and the request ID as
    // hop-by-hop: its own go, idgate's stay.
    let cert = mesh.pki.svid(FRONTEND_ID);
    let config = tls_client(&mesh.pki.ca.root_pem(), Some(&cert), &[b"http/1.1"]);
    let named = [
        ("connection", "x-forwarded-client-cert, x-request-id"),
        (
            "x-forwarded-client-cert",
            "URI=spiffe://example.org/ns/admin/sa/root",
        ),
        ("x-request-id", "peer-1"),
    ];
    let reply = mtls_send(mesh.server.inbound(), config, "GET", "/x", &named)
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let headers = &reply.echoed()["headers"];
    let xfcc = headers["x-forwarded-client-cert"].as_array();
    assert!(
        xfcc.is_some_and(|xfcc| xfcc.len() == 1
            && xfcc[0]
                .as_str()
                .unwrap()
                .ends_with(&format!("URI={FRONTEND_ID}"))),
        "the app must get idgate's XFCC alone: {headers}"
    );
    let id = headers["x-request-id"][0].as_str().expect("a request ID");
    assert_ne!(id, "peer-1", "the peer's request ID was hop-by-hop");
    assert_eq!(mesh.server.decision(id).await["path"], "/x");

    // Through both sidecars: the app names the request ID the outbound adds, which must
    // reach the inbound and the app (one ID in both decision logs).
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let reply = get(&client.url("/y"), &[("connection", "x-request-id")]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let id = reply.echoed()["headers"]["x-request-id"][0]
        .as_str()
        .expect("a request ID")
        .to_string();
    assert_eq!(client.decision(&id).await["path"], "/y");
    assert_eq!(mesh.server.decision(&id).await["path"], "/y");
}

#[tokio::test]
async fn http2_from_the_app_reaches_the_upstream() {
    let mesh = Mesh::start(ALLOW_ALL_FRONTEND).await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let reply = send(&h2c_client(), "GET", &client.url("/h2"), &[], Bytes::new()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.echoed()["path"], "/h2");
    assert!(reply.echoed()["headers"]["x-forwarded-client-cert"][0]
        .as_str()
        .unwrap()
        .ends_with(&format!("URI={FRONTEND_ID}")));
}

#[tokio::test]
async fn the_app_gets_the_host_its_client_named_through_both_sidecars() {
    // Between the sidecars (HTTP/2) the host travels as `:authority`, which the inbound
    // takes as the host: the outbound must name the client's host there.
    let mesh = Mesh::start(ALLOW_ALL_FRONTEND).await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let url = client.url("/h");
    let host = [("host", "billing.example")];
    let reply = send(&plain_client(), "GET", &url, &host, Bytes::new()).await;
    assert_eq!(
        reply.echoed()["headers"]["host"],
        serde_json::json!(["billing.example"])
    );
    // An HTTP/2 client names it in `:authority`.
    let reply = send(&h2c_client(), "GET", &url, &[], Bytes::new()).await;
    let outbound = client.outbound().to_string();
    assert_eq!(
        reply.echoed()["headers"]["host"],
        serde_json::json!([outbound])
    );
}

/// Writes `pieces` to a new connection to `addr` with a pause between them and returns
/// what the server has sent once it has sent something.
async fn first_reply_to_pieces(addr: std::net::SocketAddr, pieces: &[&[u8]]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    for piece in pieces {
        tcp.write_all(piece).await.expect("write");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut reply = vec![0u8; 4096];
    let n = tcp.read(&mut reply).await.expect("read");
    reply.truncate(n);
    reply
}

#[tokio::test]
async fn the_outbound_tells_the_protocol_by_first_bytes_however_they_arrive() {
    // The outbound peeks at a plain connection's first bytes; too few to tell (a prefix
    // of the HTTP/2 preface), it waits for more.
    let mesh = Mesh::start(ALLOW_ALL_FRONTEND).await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let addr = client.outbound();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    for pieces in [&[&preface[..]][..], &[&preface[..5], &preface[5..]]] {
        let reply = first_reply_to_pieces(addr, pieces).await;
        // A SETTINGS frame (type 4 on stream 0) opens the server's side of HTTP/2.
        assert!(reply.len() >= 9 && reply[3] == 0x4, "{reply:?}");
    }
    let put = b"PUT /h1 HTTP/1.1\r\nhost: api\r\ncontent-length: 0\r\n\r\n";
    for pieces in [
        &[&put[..]][..],
        &[&put[..1], &put[1..]],
        &[&put[..4], &put[4..]],
    ] {
        let reply = first_reply_to_pieces(addr, pieces).await;
        assert!(
            reply.starts_with(b"HTTP/1.1 200 "),
            "{}",
            String::from_utf8_lossy(&reply)
        );
    }
}

#[tokio::test]
async fn direct_mtls_client_over_h2_http11_and_without_alpn() {
    let mesh = Mesh::start(ALLOW_ALL_FRONTEND).await;
    let cert = mesh.pki.svid(FRONTEND_ID);
    // A client that offers no ALPN speaks HTTP/1.1 (HTTP/2 over TLS needs ALPN).
    for offered in [&[&b"h2"[..]][..], &[b"http/1.1"], &[]] {
        let config = tls_client(&mesh.pki.ca.root_pem(), Some(&cert), offered);
        let reply = mtls_send(mesh.server.inbound(), config, "GET", "/direct", &[])
            .await
            .unwrap_or_else(|e| panic!("offering {offered:?}: {e}"));
        assert_eq!(reply.status, 200, "offering {offered:?}");
        // The upstream always gets HTTP/1.1; what we check is that each client is served.
        assert_eq!(
            reply.echoed()["version"],
            "HTTP/1.1",
            "offering {offered:?}"
        );
    }
}

#[tokio::test]
async fn request_and_response_bodies_stream_through() {
    let mesh = Mesh::start(ALLOW_ALL_FRONTEND).await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let body: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let reply = send(
        &plain_client(),
        "POST",
        &client.url("/upload"),
        &[],
        Bytes::from(body.clone()),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), body.len());
    assert!(reply.body == body, "body changed on the way");
}

#[tokio::test]
async fn requests_reuse_one_pooled_connection_to_the_peer() {
    let mesh = Mesh::start(ALLOW_ALL_FRONTEND).await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let http = plain_client();
    for i in 0..20 {
        let reply = send(
            &http,
            "GET",
            &client.url(&format!("/n/{i}")),
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!(reply.status, 200);
    }
    let metrics = mesh.server.admin("/metrics").await.text();
    let allowed = metric(
        &metrics,
        &format!("idgate_requests_total{{listener=\"api\",direction=\"inbound\",source=\"{FRONTEND_ID}\",decision=\"allow\"}}"),
    );
    assert_eq!(allowed, 20.0, "{metrics}");
    let open = metric(&metrics, "idgate_connections_active{listener=\"api\"}");
    assert_eq!(
        open, 1.0,
        "the outbound sidecar should pool one connection: {metrics}"
    );
}

#[tokio::test]
async fn slow_upstream_gets_504() {
    let mesh = Mesh::start_with(ALLOW_ALL_FRONTEND, "timeouts = { response = \"300ms\" }").await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let reply = get(
        &client.url("/slow?delay_ms=2000"),
        &[("x-request-id", "slow-1")],
    )
    .await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    let line = mesh.server.decision("slow-1").await;
    assert_eq!(line["status"], 504);
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .contains("no response within"),
        "{line}"
    );
}

/// An app that answers every request with a head promising 100 bytes, sends 10 of them
/// and then nothing more, holding its connection open.
async fn app_that_stalls_mid_body() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, _) = counting_server(|mut stream| async move {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789";
        if stream.write_all(answer).await.is_ok() {
            // Held open, silent, until the proxy gives up on it.
            let _ = stream.read(&mut buf).await;
        }
    })
    .await;
    addr
}

/// Reads a response through `client` to its end: the bytes that came and how it ended.
async fn read_to_end(client: &Sidecar, path: &str) -> (u16, Vec<u8>, Result<(), String>) {
    use http_body_util::BodyExt;
    let response = plain_client()
        .request(empty_request(&client.url(path)))
        .await
        .expect("response head");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut got = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => got.extend_from_slice(frame.data_ref().map_or(&[][..], |d| d)),
            Err(e) => return (status, got, Err(e.to_string())),
        }
    }
    (status, got, Ok(()))
}

fn empty_request(url: &str) -> http::Request<http_body_util::Full<Bytes>> {
    http::Request::get(url)
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("request")
}

#[tokio::test]
async fn a_response_body_that_stalls_is_cut_by_either_sidecar() {
    let app = app_that_stalls_mid_body().await;
    for (inbound_timeouts, outbound_timeouts) in [
        ("timeouts = { body = \"300ms\" }", ""),
        ("", "timeouts = { body = \"300ms\" }"),
    ] {
        let mesh = Mesh::start_upstream(
            ALLOW_ALL_FRONTEND,
            &format!("http://{app}"),
            inbound_timeouts,
        )
        .await;
        let client = mesh
            .client_with("frontend", FRONTEND_ID, &[SERVER_ID], outbound_timeouts)
            .await;
        // Without the body timeout the response never ends (the default is 5 minutes).
        let (status, got, ended) = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            read_to_end(&client, "/stalls"),
        )
        .await
        .expect("the stalled body was never cut");
        assert_eq!(status, 200);
        assert_eq!(got, b"0123456789", "{inbound_timeouts}{outbound_timeouts}");
        assert!(
            ended.is_err(),
            "a cut body must not look complete: {ended:?}"
        );
    }
}

#[tokio::test]
async fn a_client_that_goes_away_mid_request_is_logged_on_both_sidecars() {
    let mesh = Mesh::start(ALLOW_ALL_FRONTEND).await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    // The app answers in 2 s; the client gives up (and closes its connection) at 300 ms.
    let given_up = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        get(
            &client.url("/slow?delay_ms=2000"),
            &[("x-request-id", "gone-1")],
        ),
    )
    .await;
    assert!(given_up.is_err(), "the slow app answered early");
    for (sidecar, line) in [
        ("outbound", client.decision("gone-1").await),
        ("inbound", mesh.server.decision("gone-1").await),
    ] {
        assert_eq!(line["status"], 499, "{sidecar}: {line}");
        assert_eq!(line["decision"], "allow", "{sidecar}: {line}");
        assert_eq!(
            line["reason"], "the client went away before the response",
            "{sidecar}: {line}"
        );
        let waited = line["duration_ms"].as_f64().unwrap();
        assert!((250.0..2000.0).contains(&waited), "{sidecar}: {line}");
    }
}

/// The decision line of a request whose client left mid-body: 499, not the upstream's 502.
#[track_caller]
fn assert_left_mid_body(sidecar: &str, line: &serde_json::Value) {
    assert_eq!(line["status"], 499, "{sidecar}: {line}");
    assert_eq!(line["decision"], "allow", "{sidecar}: {line}");
    let reason = line["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("the client went away"), "{sidecar}: {line}");
}

#[tokio::test]
async fn a_client_that_leaves_mid_body_is_logged_499_on_both_sidecars() {
    let (app, mut arrived) = body_reading_app().await;
    let mesh = Mesh::start_upstream(ALLOW_ALL_FRONTEND, &format!("http://{app}"), "").await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let stream = tokio::net::TcpStream::connect(client.outbound())
        .await
        .unwrap();
    leave_mid_body(stream, "mid-body-1", &mut arrived).await;
    assert_left_mid_body("outbound", &client.decision("mid-body-1").await);
    assert_left_mid_body("inbound", &mesh.server.decision("mid-body-1").await);
}

#[tokio::test]
async fn a_client_that_stalls_mid_body_gets_408_when_the_body_timeout_passes() {
    use tokio::io::AsyncReadExt;
    let (app, mut arrived) = body_reading_app().await;
    let mesh = Mesh::start_upstream(ALLOW_ALL_FRONTEND, &format!("http://{app}"), "").await;
    let client = mesh
        .client_with(
            "frontend",
            FRONTEND_ID,
            &[SERVER_ID],
            "timeouts = { body = \"300ms\" }",
        )
        .await;
    let stream = tokio::net::TcpStream::connect(client.outbound())
        .await
        .unwrap();
    let mut stream = stop_mid_body(stream, "stalled-body-1", &mut arrived).await;
    // Without the body timeout the request waits for the rest of its body for ever.
    let mut answer = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        stream.read_to_string(&mut answer),
    )
    .await
    .expect("the stalled request body was never cut")
    .expect("read the answer");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let line = client.decision("stalled-body-1").await;
    assert_eq!(line["status"], 408, "{line}");
    let reason = line["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("sent nothing of its request body for 300ms"),
        "{line}"
    );
}

#[tokio::test]
async fn a_peer_that_leaves_mid_body_is_logged_499_on_the_inbound() {
    let (app, mut arrived) = body_reading_app().await;
    let mesh = Mesh::start_upstream(ALLOW_ALL_FRONTEND, &format!("http://{app}"), "").await;
    let cert = mesh.pki.svid(FRONTEND_ID);
    let config = tls_client(&mesh.pki.ca.root_pem(), Some(&cert), &[b"http/1.1"]);
    let tls = mtls_connect(mesh.server.inbound(), config).await.unwrap();
    leave_mid_body(tls, "mid-body-2", &mut arrived).await;
    assert_left_mid_body("inbound", &mesh.server.decision("mid-body-2").await);
}

#[tokio::test]
async fn unreachable_upstream_gets_502() {
    let mesh = Mesh::start_with(ALLOW_ALL_FRONTEND, "").await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let toml = format!(
        "{}\n[[outbound]]\nname = \"to-nowhere\"\nlisten = \"127.0.0.1:0\"\ntarget = \"{closed}\"\nserver_ids = [\"{SERVER_ID}\"]\n",
        mesh.pki.identity_toml("lost", FRONTEND_ID)
    );
    drop(client);
    let lost = Sidecar::start(mesh.pki.dir.path(), "lost", &toml).await;
    let reply = get(&lost.url("/"), &[]).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
}

#[tokio::test]
async fn drain_lets_in_flight_requests_finish() {
    let mesh = Mesh::start(ALLOW_ALL_FRONTEND).await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let url = client.url("/slow?delay_ms=700");
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let Mesh { server, .. } = mesh;
    let admin = server.app.admin;
    let readyz = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        get(&format!("http://{admin}/readyz"), &[]).await
    });
    assert!(
        server.app.drain().await,
        "drain should finish before its timeout"
    );
    let readyz = readyz.await.unwrap();
    assert_eq!(readyz.status, 503, "/readyz must turn 503 while draining");
    assert!(readyz.text().contains("draining"), "{}", readyz.text());
    let reply = in_flight.await.unwrap();
    assert_eq!(
        reply.status,
        200,
        "in-flight request must complete during drain: {}",
        reply.text()
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let mesh = Mesh::start_with(ALLOW_ALL_FRONTEND, "timeouts = { idle = \"300ms\" }").await;
    let cert = mesh.pki.svid(FRONTEND_ID);
    let config = tls_client(&mesh.pki.ca.root_pem(), Some(&cert), &[b"http/1.1"]);
    let (mut sender, connection) = h1_connection(mesh.server.inbound(), config).await;
    let request = empty_get("/first");
    assert_eq!(sender.send_request(request).await.unwrap().status(), 200);
    let closed = tokio::time::timeout(std::time::Duration::from_secs(3), connection).await;
    assert!(
        closed.is_ok(),
        "the server should close a connection idle for longer than 300ms"
    );
}

/// The idle timeout counts only while no request is in flight: a request taking longer
/// than it is answered and leaves its connection open for the next one.
#[tokio::test]
async fn a_request_longer_than_the_idle_timeout_keeps_its_connection() {
    let mesh = Mesh::start_with(ALLOW_ALL_FRONTEND, "timeouts = { idle = \"300ms\" }").await;
    let cert = mesh.pki.svid(FRONTEND_ID);
    let slow = || empty_get("/slow?delay_ms=1000");
    let root = mesh.pki.ca.root_pem();

    let config = tls_client(&root, Some(&cert), &[b"http/1.1"]);
    let (mut sender, connection) = h1_connection(mesh.server.inbound(), config).await;
    let response = sender.send_request(slow()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers().get("connection"),
        None,
        "HTTP/1.1: {response:?}"
    );
    sender
        .ready()
        .await
        .expect("HTTP/1.1: the connection stays open");
    let again = sender.send_request(empty_get("/again")).await;
    assert_eq!(again.expect("HTTP/1.1: a second request").status(), 200);
    assert!(!connection.is_finished());

    let config = tls_client(&root, Some(&cert), &[b"h2"]);
    let (mut sender, connection) = h2_connection(mesh.server.inbound(), config).await;
    assert_eq!(sender.send_request(slow()).await.unwrap().status(), 200);
    let again = sender.send_request(empty_get("/again")).await;
    assert_eq!(
        again.expect("HTTP/2: no GOAWAY under a request").status(),
        200
    );
    assert!(!connection.is_finished());
}

#[tokio::test]
async fn drain_tells_http1_clients_to_close() {
    let mesh = Mesh::start(ALLOW_ALL_FRONTEND).await;
    let cert = mesh.pki.svid(FRONTEND_ID);
    let config = tls_client(&mesh.pki.ca.root_pem(), Some(&cert), &[b"http/1.1"]);
    let (mut sender, _connection) = h1_connection(mesh.server.inbound(), config).await;
    let request = empty_get("/slow?delay_ms=500");
    let in_flight = tokio::spawn(async move { sender.send_request(request).await });
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let Mesh { server, .. } = mesh;
    assert!(server.app.drain().await);
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
}

/// A peer that is not idgate: HTTP/2 over TLS as `SERVER_ID`, answering 200 with the
/// request's `x-forwarded-client-cert` and `proxy-authorization` values (or `-`) echoed
/// in `saw-xfcc` and `saw-proxy-authorization`.
async fn header_echoing_peer(pki: &Pki) -> std::net::SocketAddr {
    let service = hyper::service::service_fn(|request: http::Request<_>| async move {
        let saw = |name: &str| {
            request
                .headers()
                .get(name)
                .map_or("-".to_owned(), |v| v.to_str().unwrap_or("?").to_owned())
        };
        http::Response::builder()
            .header("saw-xfcc", saw("x-forwarded-client-cert"))
            .header("saw-proxy-authorization", saw("proxy-authorization"))
            .body(http_body_util::Empty::<Bytes>::new())
    });
    let http2 = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    tls_http2_peer(pki, http2, service).await
}

#[tokio::test]
async fn the_outbound_sends_neither_the_apps_xfcc_nor_its_proxy_credentials() {
    let pki = Pki::new(TD);
    let peer = header_echoing_peer(&pki).await;
    let config = pki.path("idgate.toml");
    std::fs::write(
        &config,
        pki.outbound_toml("frontend", FRONTEND_ID, peer, &[SERVER_ID]),
    )
    .expect("write config");
    let idgate = support::process::RunningIdgate::start(&config);
    let url = format!("http://{}/", idgate.address("outbound"));
    let reply = get(
        &url,
        &[
            (
                "x-forwarded-client-cert",
                "URI=spiffe://example.org/ns/admin/sa/root",
            ),
            ("proxy-authorization", "Basic c2VjcmV0OnNlY3JldA=="),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.headers["saw-xfcc"], "-");
    assert_eq!(reply.headers["saw-proxy-authorization"], "-");
}

#[tokio::test]
async fn the_outbound_logs_a_request_it_refuses_itself_as_denied() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mesh = Mesh::start(ALLOW_ALL_FRONTEND).await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let mut tcp = tokio::net::TcpStream::connect(client.outbound())
        .await
        .expect("connect");
    tcp.write_all(
        b"GET /x HTTP/1.1\r\nHost: a b\r\nx-request-id: bad-host-1\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let line = client.decision("bad-host-1").await;
    assert_eq!(line["decision"], "deny", "{line}");
    assert_eq!(line["status"], 400, "{line}");
}
