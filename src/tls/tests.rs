//! Real handshakes over loopback TCP between idgate's own server and client configs, with
//! a dev PKI per test: who sees whom, and the reason label of every refusal.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use rcgen::KeyUsagePurpose;
use rustls::client::ResolvesClientCert;
use rustls::crypto::ring::cipher_suite::{
    TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::version::{TLS12, TLS13};
use rustls::{
    CertificateError, ClientConfig, HandshakeKind, ServerConfig, SignatureScheme,
    SupportedCipherSuite,
};
use rustls_pki_types::ServerName;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{client::TlsStream, TlsAcceptor, TlsConnector};

use super::*;
use crate::devpki::{DevCa, IssuedCert, LeafSpec};
use crate::identity::{Svid, TrustBundles};

const TD: &str = "example.org";
const API: &str = "spiffe://example.org/ns/billing/sa/api";
const WEB: &str = "spiffe://example.org/ns/web/sa/frontend";
const PARTNER: &str = "spiffe://partner.org/ns/pay/sa/gateway";
const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];
const LIMIT: Duration = Duration::from_secs(10);

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).expect("test ID")
}

/// An SVID built without `Svid::from_der`'s checks, so tests can present broken leaves.
fn raw_svid(issued: &IssuedCert) -> Svid {
    let key = CertifiedKey::from_der(
        issued.chain_der.clone(),
        issued.key_der.clone_key(),
        &provider(),
    )
    .expect("certified key");
    Svid {
        spiffe_id: id("spiffe://example.org/placeholder"),
        certified_key: Arc::new(key),
        serial: "00".into(),
        not_after: 0,
    }
}

fn bundles(cas: &[(&str, &DevCa)]) -> TrustBundles {
    let mut bundles = TrustBundles::default();
    for (td, ca) in cas {
        bundles
            .insert_der(td, std::slice::from_ref(ca.root_der()))
            .expect("bundle");
    }
    bundles
}

fn handle(svid: Svid, bundles: TrustBundles) -> IdentityHandle {
    let handle = IdentityHandle::new("test");
    handle.publish(svid, bundles);
    handle
}

/// A server that reports each handshake's outcome and echoes on accepted connections.
struct TestServer {
    addr: SocketAddr,
    outcomes: mpsc::UnboundedReceiver<io::Result<PeerIdentity>>,
}

impl TestServer {
    async fn start(identity: IdentityHandle) -> Self {
        let check = PeerCheck::clients(identity.clone());
        Self::with_config(server_config(identity, ALPN, true), check).await
    }

    /// A server with `config`, checking each connection's client with `check`.
    async fn with_config(config: Arc<ServerConfig>, check: PeerCheck) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = TlsAcceptor::from(config);
        let (tx, outcomes) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, tx, check) = (acceptor.clone(), tx.clone(), check.clone());
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(e) => return drop(tx.send(Err(e))),
                    };
                    let peer =
                        PeerIdentity::of_connection(tls.get_ref().1, &check).and_then(|peer| {
                            peer.ok_or_else(|| io::Error::other("accepted a peer without identity"))
                        });
                    let failed = peer.is_err();
                    let _ = tx.send(peer);
                    if failed {
                        return;
                    }
                    let mut buf = [0u8; 64];
                    while let Ok(n @ 1..) = tls.read(&mut buf).await {
                        if tls.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self { addr, outcomes }
    }

    async fn outcome(&mut self) -> io::Result<PeerIdentity> {
        tokio::time::timeout(LIMIT, self.outcomes.recv())
            .await
            .expect("server outcome in time")
            .expect("server running")
    }
}

/// Connects, handshakes, and round-trips one message (TLS 1.3 clients learn that the
/// server refused their certificate only when they read).
async fn connect(
    addr: SocketAddr,
    client: TestClient,
) -> io::Result<(PeerIdentity, TlsStream<TcpStream>)> {
    let attempt = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("ignored.invalid").expect("name");
        let mut tls = TlsConnector::from(client.config).connect(name, tcp).await?;
        let peer = PeerIdentity::of_connection(tls.get_ref().1, &client.check)?
            .ok_or_else(|| io::Error::other("server without identity"))?;
        ping(&mut tls).await?;
        Ok((peer, tls))
    };
    tokio::time::timeout(LIMIT, attempt)
        .await
        .expect("client finished in time")
}

async fn ping(tls: &mut TlsStream<TcpStream>) -> io::Result<()> {
    tls.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    Ok(())
}

/// Server `api` in example.org; returns the CA so tests can issue clients.
async fn api_server() -> (DevCa, TestServer) {
    let ca = DevCa::new(TD).expect("ca");
    let svid = ca
        .issue_svid(&id(API))
        .expect("issue")
        .svid()
        .expect("svid");
    let server = TestServer::start(handle(svid, bundles(&[(TD, &ca)]))).await;
    (ca, server)
}

/// An outbound's client config and the check its connections' servers pass, as the
/// outbound builds them.
#[derive(Clone)]
struct TestClient {
    config: Arc<ClientConfig>,
    check: PeerCheck,
}

impl TestClient {
    /// A client of `identity` expecting `server_ids`, speaking `versions` of `provider`.
    fn build(
        identity: IdentityHandle,
        server_ids: &[&str],
        versions: &[&'static rustls::SupportedProtocolVersion],
        provider: Arc<CryptoProvider>,
        resumption: bool,
    ) -> Self {
        let ids: Vec<SpiffeId> = server_ids.iter().map(|s| id(s)).collect();
        Self {
            check: PeerCheck::servers(identity.clone(), &ids),
            config: client::build(identity, ids, ALPN, versions, provider, resumption),
        }
    }
}

fn client_for(issued: &IssuedCert, bundles: TrustBundles, server_ids: &[&str]) -> TestClient {
    let identity = handle(raw_svid(issued), bundles);
    TestClient::build(identity, server_ids, &[&TLS13, &TLS12], provider(), true)
}

/// The server refuses a client presenting `spec` (issued by the server's own CA) with `reason`.
async fn assert_client_refused(spec: LeafSpec, reason: &str) -> io::Error {
    let (ca, mut server) = api_server().await;
    let issued = ca.issue(&spec).expect("issue");
    let client = client_for(&issued, bundles(&[(TD, &ca)]), &[API]);
    let client_err = connect(server.addr, client)
        .await
        .expect_err("client refused");
    let server_err = server.outcome().await.expect_err("server refused");
    assert_eq!(failure_reason(&server_err), reason, "{server_err}");
    assert_eq!(failure_reason(&client_err), "peer_rejected", "{client_err}");
    server_err
}

#[tokio::test]
async fn mutual_handshake_both_sides_see_spiffe_ids() {
    let (ca, mut server) = api_server().await;
    let web = ca.issue_svid(&id(WEB)).expect("issue");
    let client = client_for(&web, bundles(&[(TD, &ca)]), &[API]);
    let (server_seen, tls) = connect(server.addr, client).await.expect("handshake");
    assert_eq!(server_seen.spiffe_id.as_str(), API);
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let client_seen = server.outcome().await.expect("server accepted");
    assert_eq!(client_seen.spiffe_id.as_str(), WEB);
    assert_eq!(
        client_seen.leaf_sha256,
        hex::encode(Sha256::digest(&web.chain_der[0]))
    );
    assert!(client_seen.not_after > time::OffsetDateTime::now_utc().unix_timestamp());
}

#[tokio::test]
async fn tls12_and_intermediate_chains_work() {
    let ca = DevCa::new(TD)
        .expect("ca")
        .with_intermediate()
        .expect("intermediate");
    let server_svid = ca.issue_svid(&id(API)).expect("issue");
    assert_eq!(server_svid.chain_der.len(), 2);
    let mut server = TestServer::start(handle(
        server_svid.svid().expect("svid"),
        bundles(&[(TD, &ca)]),
    ))
    .await;
    let web = ca.issue_svid(&id(WEB)).expect("issue");
    let client = TestClient::build(
        handle(web.svid().expect("svid"), bundles(&[(TD, &ca)])),
        &[API],
        &[&TLS12],
        provider(),
        true,
    );
    let (seen, tls) = connect(server.addr, client).await.expect("handshake");
    assert_eq!(seen.spiffe_id.as_str(), API);
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(
        server.outcome().await.expect("accepted").spiffe_id.as_str(),
        WEB
    );
}

/// The inbound picks the suite by idgate's order (AES-128-GCM first), not by the client's,
/// and still serves a client that offers a single other suite.
#[tokio::test]
async fn inbound_chooses_the_cipher_suite_by_its_own_order() {
    let (ca, mut server) = api_server().await;
    let web = ca.issue_svid(&id(WEB)).expect("issue");
    let cases: [(&[SupportedCipherSuite], SupportedCipherSuite); 3] = [
        (CIPHER_SUITES, TLS13_AES_128_GCM_SHA256),
        (
            &[TLS13_AES_256_GCM_SHA384, TLS13_AES_128_GCM_SHA256],
            TLS13_AES_128_GCM_SHA256,
        ),
        (
            &[TLS13_CHACHA20_POLY1305_SHA256],
            TLS13_CHACHA20_POLY1305_SHA256,
        ),
    ];
    for (offered, chosen) in cases {
        let provider = CryptoProvider {
            cipher_suites: offered.to_vec(),
            ..(*provider()).clone()
        };
        let client = TestClient::build(
            handle(web.svid().expect("svid"), bundles(&[(TD, &ca)])),
            &[API],
            &[&TLS13],
            Arc::new(provider),
            true,
        );
        let (_, tls) = connect(server.addr, client).await.expect("handshake");
        assert_eq!(
            tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
            Some(chosen.suite()),
            "client offering {offered:?}"
        );
        server.outcome().await.expect("accepted");
    }
}

#[derive(Debug)]
struct NoCert;

impl ResolvesClientCert for NoCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        None
    }
    fn has_certs(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn refuses_client_without_certificate() {
    let (ca, mut server) = api_server().await;
    let web = ca.issue_svid(&id(WEB)).expect("issue");
    let mut client = client_for(&web, bundles(&[(TD, &ca)]), &[API]);
    let mut config = (*client.config).clone();
    config.client_auth_cert_resolver = Arc::new(NoCert);
    client.config = Arc::new(config);
    let client_err = connect(server.addr, client).await.expect_err("refused");
    let server_err = server.outcome().await.expect_err("refused");
    assert_eq!(failure_reason(&server_err), "no_client_cert");
    assert_eq!(failure_reason(&client_err), "peer_rejected");
}

#[tokio::test]
async fn refuses_client_from_other_ca_of_same_trust_domain() {
    let (ca, mut server) = api_server().await;
    let rogue = DevCa::new(TD).expect("rogue ca");
    let web = rogue.issue_svid(&id(WEB)).expect("issue");
    // The client trusts the real CA, so only the server's check is exercised.
    let client = client_for(&web, bundles(&[(TD, &ca)]), &[API]);
    assert!(connect(server.addr, client).await.is_err());
    let err = server.outcome().await.expect_err("refused");
    assert_eq!(failure_reason(&err), "unknown_ca");
}

#[tokio::test]
async fn refuses_expired_client() {
    let now = time::OffsetDateTime::now_utc();
    let mut spec = LeafSpec::svid(&id(WEB));
    spec.not_before = now - time::Duration::days(2);
    spec.not_after = now - time::Duration::days(1);
    let err = assert_client_refused(spec, "expired").await;
    assert!(
        describe(&err).starts_with("certificate expired at 20"),
        "{}",
        describe(&err)
    );
}

#[tokio::test]
async fn refuses_not_yet_valid_client() {
    let now = time::OffsetDateTime::now_utc();
    let mut spec = LeafSpec::svid(&id(WEB));
    spec.not_before = now + time::Duration::days(1);
    spec.not_after = now + time::Duration::days(2);
    assert_client_refused(spec, "not_yet_valid").await;
}

#[tokio::test]
async fn refuses_client_without_uri_san_even_with_dns_names() {
    let mut spec = LeafSpec::svid(&id(WEB));
    spec.uris.clear();
    spec.dns = vec!["web.example.org".into()];
    assert_client_refused(spec, "no_spiffe_id").await;
}

#[tokio::test]
async fn refuses_client_with_two_uri_sans() {
    let mut spec = LeafSpec::svid(&id(WEB));
    spec.uris
        .push("spiffe://example.org/ns/web/sa/other".into());
    assert_client_refused(spec, "multiple_uri_sans").await;
}

#[tokio::test]
async fn refuses_client_with_malformed_spiffe_id() {
    let mut spec = LeafSpec::svid(&id(WEB));
    spec.uris = vec!["spiffe://example.org/ns/../admin".into()];
    assert_client_refused(spec, "malformed_spiffe_id").await;
}

#[tokio::test]
async fn refuses_client_leaf_with_a_trust_domain_id() {
    // `spiffe://example.org` names the trust domain, not a workload: a rule for
    // `spiffe://example.org/*` would not match it (X.509-SVID 5.2 requires a path).
    let mut spec = LeafSpec::svid(&id(WEB));
    spec.uris = vec!["spiffe://example.org".into()];
    assert_client_refused(spec, "trust_domain_id_as_leaf").await;
}

#[tokio::test]
async fn refuses_ca_certificate_as_client_leaf() {
    let mut spec = LeafSpec::svid(&id(WEB));
    spec.ca = true;
    assert_client_refused(spec, "ca_as_leaf").await;
}

#[tokio::test]
async fn refuses_leaf_with_cert_signing_key_usage() {
    let mut spec = LeafSpec::svid(&id(WEB));
    spec.key_usages.push(KeyUsagePurpose::KeyCertSign);
    assert_client_refused(spec, "bad_key_usage").await;
}

#[tokio::test]
async fn refuses_trust_domain_without_bundle() {
    let (ca, mut server) = api_server().await;
    let partner = DevCa::new("partner.org").expect("ca");
    let gateway = partner.issue_svid(&id(PARTNER)).expect("issue");
    let client = client_for(&gateway, bundles(&[(TD, &ca)]), &[API]);
    assert!(connect(server.addr, client).await.is_err());
    let err = server.outcome().await.expect_err("refused");
    assert_eq!(failure_reason(&err), "unknown_trust_domain");
    assert_eq!(describe(&err), "trust domain partner.org has no bundle");
}

#[tokio::test]
async fn accepts_federated_trust_domain_with_its_bundle() {
    let ca = DevCa::new(TD).expect("ca");
    let partner = DevCa::new("partner.org").expect("ca");
    let both = || bundles(&[(TD, &ca), ("partner.org", &partner)]);
    let api = ca
        .issue_svid(&id(API))
        .expect("issue")
        .svid()
        .expect("svid");
    let mut server = TestServer::start(handle(api, both())).await;
    let gateway = partner.issue_svid(&id(PARTNER)).expect("issue");
    let (seen, _tls) = connect(server.addr, client_for(&gateway, both(), &[API]))
        .await
        .expect("federated handshake");
    assert_eq!(seen.spiffe_id.as_str(), API);
    assert_eq!(
        server.outcome().await.expect("accepted").spiffe_id.as_str(),
        PARTNER
    );
}

#[tokio::test]
async fn outbound_refuses_unexpected_server_id() {
    let (ca, mut server) = api_server().await;
    let web = ca.issue_svid(&id(WEB)).expect("issue");
    let expected = "spiffe://example.org/ns/billing/sa/worker";
    let err = connect(
        server.addr,
        client_for(&web, bundles(&[(TD, &ca)]), &[expected]),
    )
    .await
    .expect_err("refused");
    assert_eq!(failure_reason(&err), "unexpected_server_id");
    let message = describe(&err);
    assert!(
        message.contains(API) && message.contains(expected),
        "{message}"
    );
    let server_err = server.outcome().await.expect_err("aborted");
    assert_eq!(failure_reason(&server_err), "peer_rejected");
}

#[tokio::test]
async fn outbound_refuses_server_from_unknown_ca() {
    let (_ca, mut server) = api_server().await;
    let other = DevCa::new(TD).expect("ca");
    let web = other.issue_svid(&id(WEB)).expect("issue");
    let err = connect(
        server.addr,
        client_for(&web, bundles(&[(TD, &other)]), &[API]),
    )
    .await
    .expect_err("refused");
    assert_eq!(failure_reason(&err), "unknown_ca");
    assert_eq!(
        failure_reason(&server.outcome().await.expect_err("aborted")),
        "peer_rejected"
    );
}

#[tokio::test]
async fn server_without_svid_fails_handshakes_cleanly() {
    let mut server = TestServer::start(IdentityHandle::new("files (not loaded)")).await;
    let ca = DevCa::new(TD).expect("ca");
    let web = ca.issue_svid(&id(WEB)).expect("issue");
    assert!(
        connect(server.addr, client_for(&web, bundles(&[(TD, &ca)]), &[API]))
            .await
            .is_err()
    );
    let err = server.outcome().await.expect_err("refused");
    assert_eq!(failure_reason(&err), "no_identity", "{err}");
}

#[tokio::test]
async fn plain_http_is_not_tls_and_is_counted() {
    let (_ca, mut server) = api_server().await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let err = server.outcome().await.expect_err("refused");
    let mut registry = Registry::default();
    let metrics = TlsMetrics::register(&mut registry);
    let peer: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    assert_eq!(metrics.handshake_failed("api", peer, &err), "not_tls");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(
        text.contains(r#"idgate_tls_handshake_failures_total{listener="api",reason="not_tls"} 1"#),
        "{text}"
    );
    assert_eq!(metrics.failures("api", "not_tls"), 1);
}

#[tokio::test]
async fn io_errors_without_tls_cause_are_classified() {
    let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
    assert_eq!(failure_reason(&eof), "eof");
    assert_eq!(
        failure_reason(&io::Error::from(io::ErrorKind::TimedOut)),
        "timeout"
    );
    assert_eq!(failure_reason(&io::Error::other("boom")), "io");
}

#[tokio::test]
async fn rotation_reaches_next_handshake_and_open_connections_keep_working() {
    let ca = DevCa::new(TD).expect("ca");
    let first = ca.issue_svid(&id(API)).expect("issue");
    let identity = handle(first.svid().expect("svid"), bundles(&[(TD, &ca)]));
    let mut server = TestServer::start(identity.clone()).await;
    let web = ca.issue_svid(&id(WEB)).expect("issue");
    let client = client_for(&web, bundles(&[(TD, &ca)]), &[API]);

    let (before, mut open) = connect(server.addr, client.clone()).await.expect("first");
    server.outcome().await.expect("accepted");
    assert_eq!(
        before.leaf_sha256,
        hex::encode(Sha256::digest(&first.chain_der[0]))
    );

    let second = ca.issue_svid(&id(API)).expect("issue");
    let second_svid = second.svid().expect("svid");
    let (old_serial, new_serial) = (
        identity.current().expect("m").svid.serial.clone(),
        second_svid.serial.clone(),
    );
    assert_ne!(old_serial, new_serial);
    identity.publish(second_svid, bundles(&[(TD, &ca)]));

    let (after, _tls) = connect(server.addr, client).await.expect("after rotation");
    server.outcome().await.expect("accepted");
    assert_eq!(
        after.leaf_sha256,
        hex::encode(Sha256::digest(&second.chain_der[0]))
    );
    ping(&mut open)
        .await
        .expect("connection opened before rotation still works");
}

#[test]
fn peer_identity_needs_a_spiffe_leaf() {
    assert!(PeerIdentity::from_certs(&[]).is_none());
    let ca = DevCa::new(TD).expect("ca");
    let mut spec = LeafSpec::svid(&id(WEB));
    spec.uris.clear();
    let issued = ca.issue(&spec).expect("issue");
    assert!(PeerIdentity::from_certs(&issued.chain_der).is_none());
}

/// Connects and reports whether the session was resumed (with the peer each side saw).
async fn connect_kind(
    server: &mut TestServer,
    client: TestClient,
) -> (HandshakeKind, PeerIdentity) {
    let (_, tls) = connect(server.addr, client).await.expect("handshake");
    let kind = tls.get_ref().1.handshake_kind().expect("handshake done");
    let seen = server.outcome().await.expect("server accepted");
    (kind, seen)
}

/// Connects once more and checks whether the session was resumed.
async fn assert_next_kind(
    server: &mut TestServer,
    client: &TestClient,
    want: HandshakeKind,
    why: &str,
) {
    let (kind, _) = connect_kind(server, client.clone()).await;
    assert_eq!(kind, want, "{why}");
}

/// A config for `issued` that resumes sessions (or not) and speaks only `version`.
fn resuming_client(
    issued: &IssuedCert,
    ca: &DevCa,
    version: &'static rustls::SupportedProtocolVersion,
    resumption: bool,
) -> (IdentityHandle, TestClient) {
    let identity = handle(raw_svid(issued), bundles(&[(TD, ca)]));
    let client = TestClient::build(identity.clone(), &[API], &[version], provider(), resumption);
    (identity, client)
}

#[tokio::test]
async fn the_next_connection_resumes_and_the_server_still_knows_the_client() {
    for version in [&TLS13, &TLS12] {
        let (ca, mut server) = api_server().await;
        let web = ca.issue_svid(&id(WEB)).expect("issue");
        let (_, client) = resuming_client(&web, &ca, version, true);
        let (first, _) = connect_kind(&mut server, client.clone()).await;
        assert_eq!(first, HandshakeKind::Full, "{version:?}");
        for _ in 0..3 {
            let (kind, seen) = connect_kind(&mut server, client.clone()).await;
            assert_eq!(kind, HandshakeKind::Resumed, "{version:?}");
            assert_eq!(seen.spiffe_id.as_str(), WEB, "{version:?}");
            assert_eq!(
                seen.leaf_sha256,
                hex::encode(Sha256::digest(&web.chain_der[0]))
            );
        }
    }
}

#[tokio::test]
async fn resumption_switched_off_on_either_side_means_full_handshakes() {
    let ca = DevCa::new(TD).expect("ca");
    let api = ca.issue_svid(&id(API)).expect("issue");
    let server_identity = || handle(api.svid().expect("svid"), bundles(&[(TD, &ca)]));
    let server_off = server_config(server_identity(), ALPN, false);
    let mut server =
        TestServer::with_config(server_off, PeerCheck::clients(server_identity())).await;
    let web = ca.issue_svid(&id(WEB)).expect("issue");
    let (_, client) = resuming_client(&web, &ca, &TLS13, true);
    for _ in 0..2 {
        let (kind, _) = connect_kind(&mut server, client.clone()).await;
        assert_eq!(kind, HandshakeKind::Full, "the server offers no tickets");
    }
    let mut server = TestServer::start(server_identity()).await;
    let (_, client_off) = resuming_client(&web, &ca, &TLS13, false);
    for _ in 0..2 {
        let (kind, _) = connect_kind(&mut server, client_off.clone()).await;
        assert_eq!(kind, HandshakeKind::Full, "the client keeps no sessions");
    }
}

/// New identity material (a rotated SVID, a changed bundle) ends every session, on the
/// server's side and on the client's: a removed trust anchor must not ride a ticket.
#[tokio::test]
async fn new_identity_material_on_either_side_ends_resumption() {
    let ca = DevCa::new(TD).expect("ca");
    let api = ca.issue_svid(&id(API)).expect("issue");
    let server_identity = handle(api.svid().expect("svid"), bundles(&[(TD, &ca)]));
    let mut server = TestServer::start(server_identity.clone()).await;
    let web = ca.issue_svid(&id(WEB)).expect("issue");
    let (client_identity, client) = resuming_client(&web, &ca, &TLS13, true);
    assert_next_kind(&mut server, &client, HandshakeKind::Full, "").await;
    assert_next_kind(&mut server, &client, HandshakeKind::Resumed, "").await;
    server_identity.publish(api.svid().expect("svid"), bundles(&[(TD, &ca)]));
    assert_next_kind(
        &mut server,
        &client,
        HandshakeKind::Full,
        "the server's new material",
    )
    .await;
    assert_next_kind(&mut server, &client, HandshakeKind::Resumed, "").await;
    client_identity.publish(raw_svid(&web), bundles(&[(TD, &ca)]));
    assert_next_kind(
        &mut server,
        &client,
        HandshakeKind::Full,
        "the client's new material",
    )
    .await;
}

/// A burst of new connections resumes as a whole, beyond the 8 tickets per server that
/// rustls's own cache keeps: 16 connections open at once, then 16 more.
#[tokio::test]
async fn a_burst_of_connections_all_resume() {
    let (ca, mut server) = api_server().await;
    let web = ca.issue_svid(&id(WEB)).expect("issue");
    let (_, client) = resuming_client(&web, &ca, &TLS13, true);
    let burst = || async {
        let connections = (0..16).map(|_| connect(server.addr, client.clone()));
        let opened = futures_util::future::join_all(connections).await;
        opened
            .into_iter()
            .map(|c| c.expect("handshake").1.get_ref().1.handshake_kind())
            .collect::<Vec<_>>()
    };
    assert!(burst()
        .await
        .iter()
        .all(|k| *k == Some(HandshakeKind::Full)));
    let kinds = burst().await;
    assert!(
        kinds.iter().all(|k| *k == Some(HandshakeKind::Resumed)),
        "{kinds:?}"
    );
    for _ in 0..32 {
        server.outcome().await.expect("server accepted");
    }
}

/// Waits until a certificate issued `valid_for(SHORT)` now has expired.
const SHORT: time::Duration = time::Duration::seconds(2);
async fn wait_until_expired() {
    tokio::time::sleep(Duration::from_millis(3_500)).await;
}

/// A leaf for `id` from `ca` that expires [`SHORT`] from now.
fn short_lived(ca: &DevCa, id_text: &str) -> IssuedCert {
    ca.issue(&LeafSpec::svid(&id(id_text)).valid_for(SHORT))
        .expect("issue")
}

/// `refused` came from a full handshake's verification of an expired certificate, not
/// from the check after a resumption.
fn assert_expired_in_full_handshake(refused: &io::Error) {
    let error = refused
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a TLS error: {refused}"));
    assert!(
        matches!(
            error,
            rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
        ),
        "refused by a full handshake's verification, not after a resumption: {refused}"
    );
}

/// The inbound's tickets die with the earliest client certificate they were issued for:
/// an expired client that offers its ticket gets a full handshake, and is refused there.
#[tokio::test]
async fn no_ticket_outlives_the_client_certificate() {
    let (ca, mut server) = api_server().await;
    let short = short_lived(&ca, WEB);
    let (_, client) = resuming_client(&short, &ca, &TLS13, true);
    assert_next_kind(&mut server, &client, HandshakeKind::Full, "").await;
    wait_until_expired().await;
    connect(server.addr, client).await.expect_err("refused");
    let refused = server.outcome().await.expect_err("server refused");
    assert_expired_in_full_handshake(&refused);
    assert_eq!(failure_reason(&refused), "expired");
}

/// The outbound forgets sessions with the earliest server certificate they were made
/// with, even when the server (not idgate) would still resume them.
#[tokio::test]
async fn no_session_outlives_the_server_certificate() {
    let ca = DevCa::new(TD).expect("ca");
    let short = short_lived(&ca, API);
    let mut server =
        TestServer::with_config(forgetful_server(&ca, &short), forgetful_check(&ca, &short)).await;
    let web = ca.issue_svid(&id(WEB)).expect("issue");
    let (_, client) = resuming_client(&web, &ca, &TLS13, true);
    assert_next_kind(&mut server, &client, HandshakeKind::Full, "").await;
    assert_next_kind(
        &mut server,
        &client,
        HandshakeKind::Resumed,
        "the server resumes",
    )
    .await;
    wait_until_expired().await;
    let refused = connect(server.addr, client).await.expect_err("refused");
    assert_expired_in_full_handshake(&refused);
}

/// A certificate is public: a client showing one that is about to expire, without its
/// key, is refused and does not end the epoch of the other clients' tickets.
#[tokio::test]
async fn a_certificate_shown_without_its_key_does_not_end_resumption() {
    for version in [&TLS13, &TLS12] {
        let (ca, mut server) = api_server().await;
        let web = ca.issue_svid(&id(WEB)).expect("issue");
        let (_, client) = resuming_client(&web, &ca, version, true);
        assert_next_kind(&mut server, &client, HandshakeKind::Full, "").await;
        let seen = short_lived(&ca, WEB);
        let signer = provider()
            .key_provider
            .load_private_key(web.key_der.clone_key())
            .expect("key");
        let shown = Svid {
            certified_key: Arc::new(CertifiedKey::new(seen.chain_der.clone(), signer)),
            ..raw_svid(&web)
        };
        let identity = handle(shown, bundles(&[(TD, &ca)]));
        let impostor = TestClient::build(identity, &[API], &[version], provider(), false);
        let _ = connect(server.addr, impostor).await;
        let refused = server.outcome().await.expect_err("no key, refused");
        assert_eq!(failure_reason(&refused), "bad_signature", "{refused}");
        wait_until_expired().await;
        assert_next_kind(
            &mut server,
            &client,
            HandshakeKind::Resumed,
            "the epoch outlives a certificate no handshake proved",
        )
        .await;
    }
}

/// The last check: a server whose tickets outlive certificates resumes an expired
/// client's session, and the connection is still refused once established.
#[tokio::test]
async fn a_resumed_session_with_an_expired_peer_is_refused() {
    let ca = DevCa::new(TD).expect("ca");
    let api = ca.issue_svid(&id(API)).expect("issue");
    let mut server =
        TestServer::with_config(forgetful_server(&ca, &api), forgetful_check(&ca, &api)).await;
    let short = short_lived(&ca, WEB);
    let (_, client) = resuming_client(&short, &ca, &TLS13, true);
    assert_next_kind(&mut server, &client, HandshakeKind::Full, "").await;
    // Resumed while the certificate is valid: verified again, passes, and is remembered.
    assert_next_kind(&mut server, &client, HandshakeKind::Resumed, "").await;
    wait_until_expired().await;
    let _ = connect(server.addr, client).await;
    let refused = server
        .outcome()
        .await
        .expect_err("refused after resumption");
    assert!(describe(&refused).contains("resumed session"), "{refused}");
    assert_eq!(failure_reason(&refused), "expired");
}

/// The check idgate would make of a forgetful server's clients.
fn forgetful_check(ca: &DevCa, svid: &IssuedCert) -> PeerCheck {
    PeerCheck::clients(handle(raw_svid(svid), bundles(&[(TD, ca)])))
}

/// A plain rustls server (not idgate's config) presenting `svid`, checking client chains
/// against `ca`, whose tickets live 6 hours whatever the certificates say.
fn forgetful_server(ca: &DevCa, svid: &IssuedCert) -> Arc<ServerConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.root_der().clone()).expect("root");
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .expect("verifier");
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&TLS13])
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(svid.chain_der.clone(), svid.key_der.clone_key())
        .expect("server cert");
    config.ticketer = rustls::crypto::ring::Ticketer::new().expect("ticketer");
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Everything `from` wants to send, delivered to and processed by `to` (in memory, so a
/// test can publish new identity material between two flights of one handshake).
fn pump(from: &mut rustls::Connection, to: &mut rustls::Connection) -> Result<(), rustls::Error> {
    let mut flight = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut flight).expect("write_tls");
    }
    let mut unread = &flight[..];
    while !unread.is_empty() {
        to.read_tls(&mut unread).expect("read_tls");
        to.process_new_packets()?;
    }
    Ok(())
}

/// A client and a server connection of `client` and `server`, in memory.
fn in_memory(
    client: &TestClient,
    server: &Arc<ServerConfig>,
) -> (rustls::Connection, rustls::Connection) {
    let name = ServerName::try_from("ignored.invalid").expect("name");
    let c = rustls::ClientConnection::new(client.config.clone(), name).expect("client");
    let s = rustls::ServerConnection::new(server.clone()).expect("server");
    (c.into(), s.into())
}

/// Runs the handshake to its end (or its first refusal).
fn handshake(c: &mut rustls::Connection, s: &mut rustls::Connection) -> Result<(), rustls::Error> {
    while c.is_handshaking() || s.is_handshaking() || c.wants_write() || s.wants_write() {
        pump(c, s)?;
        pump(s, c)?;
    }
    Ok(())
}

/// Two full handshakes under CA1 (the second with the peer's chain remembered as
/// verified), then CA1 leaves the bundle of the outbound (`on_outbound`) or the inbound:
/// the same chain is verified again and refused.
fn assert_remembered_chain_refused_once_its_ca_leaves(on_outbound: bool) {
    let (ca1, ca2) = (DevCa::new(TD).expect("ca1"), DevCa::new(TD).expect("ca2"));
    let api = ca1.issue_svid(&id(API)).expect("api");
    let server_identity = handle(api.svid().expect("svid"), bundles(&[(TD, &ca1)]));
    let server = server_config(server_identity.clone(), ALPN, false);
    let web = ca1.issue_svid(&id(WEB)).expect("web");
    let (client_identity, client) = resuming_client(&web, &ca1, &TLS13, false);
    for _ in 0..2 {
        let (mut c, mut s) = in_memory(&client, &server);
        handshake(&mut c, &mut s).expect("full handshake under CA1");
        assert_eq!(s.handshake_kind(), Some(HandshakeKind::Full));
    }
    let (identity, own) = match on_outbound {
        true => (client_identity, &web),
        false => (server_identity, &api),
    };
    identity.publish(own.svid().expect("svid"), bundles(&[(TD, &ca2)]));
    let (mut c, mut s) = in_memory(&client, &server);
    let refused = handshake(&mut c, &mut s).expect_err("CA1 no longer trusted");
    assert!(
        matches!(
            refused,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{refused:?}"
    );
}

/// The inbound remembers a client chain that passed a full handshake, but only under the
/// material it passed with.
#[test]
fn a_chain_remembered_as_verified_is_refused_after_its_ca_leaves_the_bundle() {
    assert_remembered_chain_refused_once_its_ca_leaves(false);
}

/// The same on the outbound, for the server's chain.
#[test]
fn a_server_chain_remembered_as_verified_is_refused_after_its_ca_leaves_the_bundle() {
    assert_remembered_chain_refused_once_its_ca_leaves(true);
}

/// A trust anchor removed while a (resumed) handshake is under way must not ride the
/// ticket that handshake ends with: the inbound verifies a resumed client's chain again
/// against the current bundles and refuses it.
#[test]
fn a_ticket_issued_across_a_bundle_change_does_not_outlive_the_removed_ca() {
    let (ca1, ca2) = (DevCa::new(TD).expect("ca1"), DevCa::new(TD).expect("ca2"));
    let api = ca1.issue_svid(&id(API)).expect("api");
    let server_identity = handle(api.svid().expect("svid"), bundles(&[(TD, &ca1)]));
    let server = server_config(server_identity.clone(), ALPN, true);
    let check = PeerCheck::clients(server_identity.clone());
    let web = ca1.issue_svid(&id(WEB)).expect("web");
    let (_, client) = resuming_client(&web, &ca1, &TLS13, true);
    let (mut c, mut s) = in_memory(&client, &server);
    handshake(&mut c, &mut s).expect("full handshake");
    // A resumption under the old bundle passes (and its chain is remembered as verified).
    let (mut c, mut s) = in_memory(&client, &server);
    handshake(&mut c, &mut s).expect("resumed handshake");
    assert_eq!(s.handshake_kind(), Some(HandshakeKind::Resumed));
    PeerIdentity::of_connection(&s, &check).expect("CA1 still trusted");
    // A resumption whose client Finished arrives only after CA1 left the bundle: the
    // ticket it gets is made under the new material.
    let (mut c, mut s) = in_memory(&client, &server);
    pump(&mut c, &mut s).expect("ClientHello");
    pump(&mut s, &mut c).expect("server flight");
    server_identity.publish(api.svid().expect("svid"), bundles(&[(TD, &ca2)]));
    handshake(&mut c, &mut s).expect("client Finished, ticket");
    assert_eq!(s.handshake_kind(), Some(HandshakeKind::Resumed));
    let (mut c, mut s) = in_memory(&client, &server);
    handshake(&mut c, &mut s).expect("handshake with the late ticket");
    assert_eq!(s.handshake_kind(), Some(HandshakeKind::Resumed));
    let refused = PeerIdentity::of_connection(&s, &check).expect_err("CA1 no longer trusted");
    assert_eq!(failure_reason(&refused), "unknown_ca", "{refused}");
    assert!(describe(&refused).contains("resumed session"), "{refused}");
}

/// The same on the outbound: a ticket read after the outbound's bundle lost the server's
/// CA resumes, and the server is refused there.
#[test]
fn a_ticket_read_after_a_bundle_change_does_not_outlive_the_removed_ca() {
    let (ca1, ca2) = (DevCa::new(TD).expect("ca1"), DevCa::new(TD).expect("ca2"));
    let api = ca1.issue_svid(&id(API)).expect("api");
    let server_identity = handle(api.svid().expect("svid"), bundles(&[(TD, &ca1)]));
    let server = server_config(server_identity, ALPN, true);
    let web = ca1.issue_svid(&id(WEB)).expect("web");
    let (client_identity, client) = resuming_client(&web, &ca1, &TLS13, true);
    let (mut c, mut s) = in_memory(&client, &server);
    pump(&mut c, &mut s).expect("ClientHello");
    pump(&mut s, &mut c).expect("server flight, verified under CA1");
    pump(&mut c, &mut s).expect("client flight; the server queues its ticket");
    client_identity.publish(raw_svid(&web), bundles(&[(TD, &ca2)]));
    handshake(&mut c, &mut s).expect("ticket read under the new material");
    let (mut c, mut s) = in_memory(&client, &server);
    handshake(&mut c, &mut s).expect("handshake with the late ticket");
    assert_eq!(c.handshake_kind(), Some(HandshakeKind::Resumed));
    let refused =
        PeerIdentity::of_connection(&c, &client.check).expect_err("CA1 no longer trusted");
    assert_eq!(failure_reason(&refused), "unknown_ca", "{refused}");
}

/// A resumed session's server is held to the outbound's expected IDs as they are now.
#[test]
fn a_resumed_server_must_still_be_expected() {
    let ca = DevCa::new(TD).expect("ca");
    let api = ca.issue_svid(&id(API)).expect("api");
    let server = server_config(
        handle(api.svid().expect("svid"), bundles(&[(TD, &ca)])),
        ALPN,
        true,
    );
    let web = ca.issue_svid(&id(WEB)).expect("web");
    let (identity, client) = resuming_client(&web, &ca, &TLS13, true);
    let (mut c, mut s) = in_memory(&client, &server);
    handshake(&mut c, &mut s).expect("full handshake");
    let (mut c, mut s) = in_memory(&client, &server);
    handshake(&mut c, &mut s).expect("resumed handshake");
    assert_eq!(c.handshake_kind(), Some(HandshakeKind::Resumed));
    PeerIdentity::of_connection(&c, &client.check).expect("still expected");
    let other = PeerCheck::servers(identity, &[id(PARTNER)]);
    let refused = PeerIdentity::of_connection(&c, &other).expect_err("not expected");
    assert_eq!(
        failure_reason(&refused),
        "unexpected_server_id",
        "{refused}"
    );
}
