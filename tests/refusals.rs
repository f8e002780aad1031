//! Handshakes and peers that must be refused, each with its reason counted.

mod support;

use std::time::Duration;

use idgate::devpki::{DevCa, LeafSpec};
use idgate::spiffe_id::SpiffeId;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALLOW_ALL: &str = "default = \"allow\"\n";

fn spec(id: &str) -> LeafSpec {
    let mut spec = LeafSpec::svid(&SpiffeId::parse(id).unwrap());
    spec.dns = vec!["localhost".into()];
    spec
}

/// Connects with `client` and expects the handshake or first request to fail, then
/// checks the server counted the failure under `reason`.
async fn assert_refused(
    mesh: &Mesh,
    client: Option<idgate::devpki::IssuedCert>,
    ca_pem: &str,
    reason: &str,
) {
    let config = tls_client(ca_pem, client.as_ref(), &[b"http/1.1"]);
    let result = mtls_send(mesh.server.inbound(), config, "GET", "/", &[]).await;
    assert!(
        result.is_err(),
        "expected refusal ({reason}), got {result:?}"
    );
    let label =
        format!("idgate_tls_handshake_failures_total{{listener=\"api\",reason=\"{reason}\"}}");
    for _ in 0..50 {
        let metrics = mesh.server.admin("/metrics").await.text();
        if metric(&metrics, &label) >= 1.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{label} not counted: {}",
        mesh.server.admin("/metrics").await.text()
    );
}

#[tokio::test]
async fn no_client_certificate() {
    let mesh = Mesh::start(ALLOW_ALL).await;
    assert_refused(&mesh, None, &mesh.pki.ca.root_pem(), "no_client_cert").await;
}

#[tokio::test]
async fn certificate_from_another_ca() {
    let mesh = Mesh::start(ALLOW_ALL).await;
    let other = DevCa::new(TD).unwrap();
    let cert = other.issue(&spec(FRONTEND_ID)).unwrap();
    assert_refused(&mesh, Some(cert), &mesh.pki.ca.root_pem(), "unknown_ca").await;
}

#[tokio::test]
async fn expired_certificate() {
    let mesh = Mesh::start(ALLOW_ALL).await;
    let mut s = spec(FRONTEND_ID);
    s.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(2);
    s.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    assert_refused(
        &mesh,
        Some(mesh.pki.ca.issue(&s).unwrap()),
        &mesh.pki.ca.root_pem(),
        "expired",
    )
    .await;
}

#[tokio::test]
async fn not_yet_valid_certificate() {
    let mesh = Mesh::start(ALLOW_ALL).await;
    let mut s = spec(FRONTEND_ID);
    s.not_before = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    s.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(2);
    assert_refused(
        &mesh,
        Some(mesh.pki.ca.issue(&s).unwrap()),
        &mesh.pki.ca.root_pem(),
        "not_yet_valid",
    )
    .await;
}

#[tokio::test]
async fn certificate_without_uri_san() {
    let mesh = Mesh::start(ALLOW_ALL).await;
    let mut s = spec(FRONTEND_ID);
    s.uris.clear();
    assert_refused(
        &mesh,
        Some(mesh.pki.ca.issue(&s).unwrap()),
        &mesh.pki.ca.root_pem(),
        "no_spiffe_id",
    )
    .await;
}

#[tokio::test]
async fn certificate_with_two_uri_sans() {
    let mesh = Mesh::start(ALLOW_ALL).await;
    let mut s = spec(FRONTEND_ID);
    s.uris.push(REPORTS_ID.into());
    assert_refused(
        &mesh,
        Some(mesh.pki.ca.issue(&s).unwrap()),
        &mesh.pki.ca.root_pem(),
        "multiple_uri_sans",
    )
    .await;
}

#[tokio::test]
async fn certificate_from_a_trust_domain_without_bundle() {
    let mesh = Mesh::start(ALLOW_ALL).await;
    let other = DevCa::new("other.org").unwrap();
    let cert = other.issue(&spec("spiffe://other.org/ns/x/sa/y")).unwrap();
    assert_refused(
        &mesh,
        Some(cert),
        &mesh.pki.ca.root_pem(),
        "unknown_trust_domain",
    )
    .await;
}

#[tokio::test]
async fn ca_certificate_used_as_leaf() {
    let mesh = Mesh::start(ALLOW_ALL).await;
    let mut s = spec(FRONTEND_ID);
    s.ca = true;
    assert_refused(
        &mesh,
        Some(mesh.pki.ca.issue(&s).unwrap()),
        &mesh.pki.ca.root_pem(),
        "ca_as_leaf",
    )
    .await;
}

/// A frontend whose outbound listener expects a server ID that `mesh`'s server does not have.
async fn client_expecting_someone_else(mesh: &Mesh) -> Sidecar {
    mesh.client(
        "frontend",
        FRONTEND_ID,
        &["spiffe://example.org/ns/billing/sa/someone-else"],
    )
    .await
}

#[tokio::test]
async fn outbound_to_unexpected_server_id_gets_502() {
    let mesh = Mesh::start(ALLOW_ALL).await;
    let client = client_expecting_someone_else(&mesh).await;
    let reply = get(&client.url("/"), &[("x-request-id", "wrong-server")]).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    let line = client.decision("wrong-server").await;
    let reason = line["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("someone-else") && reason.contains(SERVER_ID),
        "{reason}"
    );
    // One sentence a person reads, not a debug dump of the error's structure.
    assert!(
        reason.contains(&format!(
            "server presented {SERVER_ID}, expected spiffe://example.org/ns/billing/sa/someone-else"
        )),
        "{reason}"
    );
    assert!(!reason.contains("OtherError"), "{reason}");
}

#[tokio::test]
async fn non_tls_bytes_do_not_disturb_other_clients() {
    let mesh = Mesh::start(ALLOW_ALL).await;
    let mut junk = tokio::net::TcpStream::connect(mesh.server.inbound())
        .await
        .unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), junk.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "the server should close a non-TLS connection promptly"
    );
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    assert_eq!(get(&client.url("/ok"), &[]).await.status, 200);
}

/// `idgate_tls_handshake_failures_total` of `client`'s outbound listener for `reason`.
async fn outbound_failures(client: &Sidecar, reason: &str) -> f64 {
    let metrics = client.admin("/metrics").await.text();
    metric(
        &metrics,
        &format!("idgate_tls_handshake_failures_total{{listener=\"to-api\",reason=\"{reason}\"}}"),
    )
}

/// A peer on a free port that presents `cert` (its handshake is all it does), and a
/// frontend whose outbound listener dials it expecting `SERVER_ID`.
async fn frontend_to_peer(pki: &Pki, cert: idgate::devpki::IssuedCert) -> Sidecar {
    let acceptor = tls_acceptor(&cert, &[b"h2", b"http/1.1"]);
    let (peer, _) = counting_server(move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            let _ = acceptor.accept(tcp).await;
        }
    })
    .await;
    let toml = pki.outbound_toml("frontend", FRONTEND_ID, peer, &[SERVER_ID]);
    Sidecar::start(pki.dir.path(), "frontend", &toml).await
}

#[tokio::test]
async fn outbound_handshake_failures_are_counted_with_their_reason() {
    let mesh = Mesh::start(ALLOW_ALL).await;
    let client = client_expecting_someone_else(&mesh).await;
    assert_eq!(
        outbound_failures(&client, "unexpected_server_id").await,
        0.0
    );
    assert_eq!(get(&client.url("/"), &[]).await.status, 502);
    assert_eq!(
        outbound_failures(&client, "unexpected_server_id").await,
        1.0
    );

    let pki = Pki::new(TD);
    let mut expired = spec(SERVER_ID);
    expired.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(2);
    expired.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let client = frontend_to_peer(&pki, pki.ca.issue(&expired).unwrap()).await;
    assert_eq!(get(&client.url("/"), &[]).await.status, 502);
    assert_eq!(outbound_failures(&client, "expired").await, 1.0);

    let pki = Pki::new(TD);
    let stranger = DevCa::new(TD).unwrap().issue(&spec(SERVER_ID)).unwrap();
    let client = frontend_to_peer(&pki, stranger).await;
    assert_eq!(get(&client.url("/"), &[]).await.status, 502);
    assert_eq!(outbound_failures(&client, "unknown_ca").await, 1.0);
}

#[tokio::test]
async fn an_outbound_handshake_that_never_finishes_is_counted_as_a_timeout() {
    let pki = Pki::new(TD);
    // Accepts the TCP connection and never answers the ClientHello.
    let (silent, _) = counting_server(|tcp| async move {
        let _held = tcp;
        std::future::pending::<()>().await;
    })
    .await;
    let toml = format!(
        "{}timeouts = {{ connect = \"300ms\" }}\n",
        pki.outbound_toml("frontend", FRONTEND_ID, silent, &[SERVER_ID])
    );
    let client = Sidecar::start(pki.dir.path(), "frontend", &toml).await;
    assert_eq!(get(&client.url("/"), &[]).await.status, 504);
    assert_eq!(outbound_failures(&client, "timeout").await, 1.0);
}
