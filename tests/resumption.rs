//! TLS session resumption through real sidecars: on by default in both directions, off
//! per listener (`session_resumption = false`), counted in
//! `idgate_tls_sessions_resumed_total{listener}`, and a resumed client is still the same
//! peer to the policy and the app.

mod support;

use std::time::Duration;

use rustls::HandshakeKind;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Admits the frontend only (a policy's default is deny).
const FRONTEND_ONLY: &str = ALLOW_ALL_FRONTEND;

/// Four connections from one rustls client (which keeps sessions, as rustls clients do by
/// default), one request each: the handshake kinds and what the app saw.
async fn four_connections(mesh: &Mesh, id: &str) -> Vec<(HandshakeKind, Reply)> {
    let cert = mesh.pki.svid(id);
    let config = tls_client(&mesh.pki.ca.root_pem(), Some(&cert), &[b"http/1.1"]);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let tls = mtls_connect(mesh.server.inbound(), config.clone())
            .await
            .expect("handshake");
        let kind = tls.get_ref().1.handshake_kind().expect("handshake done");
        let reply = mtls_send_on(tls, "GET", "/", &[]).await.expect("request");
        seen.push((kind, reply));
    }
    seen
}

/// The value of `idgate_tls_sessions_resumed_total` for `listener` on `sidecar`.
async fn resumed(sidecar: &Sidecar, listener: &str) -> f64 {
    let metrics = sidecar.admin("/metrics").await.text();
    let series = format!("idgate_tls_sessions_resumed_total{{listener=\"{listener}\"}}");
    metric(&metrics, &series)
}

#[tokio::test]
async fn the_inbound_resumes_sessions_and_still_judges_the_resumed_peer() {
    let mesh = Mesh::start(FRONTEND_ONLY).await;
    let seen = four_connections(&mesh, FRONTEND_ID).await;
    let kinds: Vec<_> = seen.iter().map(|(kind, _)| *kind).collect();
    assert_eq!(kinds[0], HandshakeKind::Full);
    assert_eq!(kinds[1..], [HandshakeKind::Resumed; 3]);
    for (_, reply) in &seen {
        assert_eq!(reply.status, 200);
        let xfcc = reply.echoed()["headers"]["x-forwarded-client-cert"][0].clone();
        assert!(
            xfcc.as_str()
                .is_some_and(|v| v.ends_with(&format!("URI={FRONTEND_ID}"))),
            "{xfcc}"
        );
    }
    assert_eq!(resumed(&mesh.server, "api").await, 3.0);

    let denied = four_connections(&mesh, REPORTS_ID).await;
    assert_eq!(denied[3].0, HandshakeKind::Resumed);
    assert!(
        denied.iter().all(|(_, reply)| reply.status == 403),
        "a resumed session is judged by its own peer's identity"
    );
}

#[tokio::test]
async fn session_resumption_false_on_the_inbound_means_full_handshakes() {
    let mesh = Mesh::start_with(FRONTEND_ONLY, "session_resumption = false").await;
    let seen = four_connections(&mesh, FRONTEND_ID).await;
    assert!(
        seen.iter()
            .all(|(kind, reply)| *kind == HandshakeKind::Full && reply.status == 200),
        "{:?}",
        seen.iter().map(|(kind, _)| kind).collect::<Vec<_>>()
    );
    assert_eq!(resumed(&mesh.server, "api").await, 0.0);
}

/// TCP outbound: every app connection is a new mTLS connection to the peer, the case
/// resumption is for.
#[tokio::test]
async fn tcp_outbound_connections_resume_unless_switched_off() {
    let (echo, _) = tcp_echo().await;
    let mesh = Mesh::start_tcp(FRONTEND_ONLY, &format!("tcp://{echo}")).await;
    let resuming = mesh
        .client_with("frontend", FRONTEND_ID, &[SERVER_ID], "protocol = \"tcp\"")
        .await;
    let full = mesh
        .client_with(
            "frontend-full",
            FRONTEND_ID,
            &[SERVER_ID],
            "protocol = \"tcp\"\nsession_resumption = false",
        )
        .await;
    for client in [&resuming, &full] {
        for _ in 0..4 {
            echo_once(client).await;
        }
    }
    assert_eq!(resumed(&resuming, "to-api").await, 3.0);
    assert_eq!(resumed(&full, "to-api").await, 0.0);
    assert_eq!(resumed(&mesh.server, "api").await, 3.0);
}

/// One connection through `client`'s TCP outbound: a line out, the same line back.
async fn echo_once(client: &Sidecar) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(client.outbound()).await?;
        stream.write_all(b"hello\n").await?;
        stream.shutdown().await?;
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await?;
        Ok::<_, std::io::Error>(back)
    };
    let back = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("in time")
        .expect("echo");
    assert_eq!(back, b"hello\n");
}
