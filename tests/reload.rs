//! Hot reload, audit mode and break-glass rules on a running sidecar.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::process::RunningIdgate;
use support::*;

const ALLOW_A: &str = r#"
[[rule]]
name = "frontend-a"
action = "allow"
from = ["spiffe://example.org/ns/shop/sa/frontend"]
paths = ["/a", "/b"]
"#;

const DENY_A: &str = r#"
[[rule]]
name = "frontend-a"
action = "allow"
from = ["spiffe://example.org/ns/shop/sa/frontend"]
paths = ["/a", "/b"]

[[rule]]
name = "close-a"
action = "deny"
paths = ["/a"]
"#;

/// Replaces a file the way editors do: write a temp file, rename it over the old one.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls until `GET path` through `client` returns `status` (reloads land within 1 s).
async fn until_status(client: &Sidecar, path: &str, status: u16) {
    for _ in 0..40 {
        if get(&client.url(path), &[]).await.status == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("GET {path} never returned {status}");
}

#[tokio::test]
async fn reload_under_load_judges_every_request_by_one_version() {
    let mesh = Mesh::start(ALLOW_A).await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let policy = mesh.pki.path("policy.toml");
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, url) = (stop.clone(), client.url("/a"));
        tokio::spawn(async move {
            let http = plain_client();
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let reply = send(&http, "GET", &url, &[], bytes::Bytes::new()).await;
                statuses.push(reply.status.as_u16());
            }
            statuses
        })
    };
    // Each write is followed by a pause longer than the reloader's quiet time (200 ms),
    // so each is loaded: writes every 60 ms are debounced into one reload per 700 ms,
    // which always sampled the same phase of the alternation.
    for i in 0..12 {
        replace(&policy, if i % 2 == 0 { DENY_A } else { ALLOW_A });
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    replace(&policy, DENY_A);
    until_status(&client, "/a", 403).await;
    stop.store(true, Ordering::Relaxed);
    let statuses = load.await.unwrap();
    assert!(
        statuses.len() > 50,
        "the client should have kept sending: {}",
        statuses.len()
    );
    let unexpected: Vec<_> = statuses
        .iter()
        .filter(|s| **s != 200 && **s != 403)
        .collect();
    assert!(
        unexpected.is_empty(),
        "responses outside both versions: {unexpected:?}"
    );
    assert!(
        statuses.contains(&200) && statuses.contains(&403),
        "both versions should have served"
    );
    assert_eq!(
        get(&client.url("/b"), &[]).await.status,
        200,
        "the last version is in force"
    );
    let metrics = mesh.server.admin("/metrics").await.text();
    assert!(
        metric(&metrics, "idgate_policy_reloads_total{result=\"ok\"}") >= 2.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_broken_edit_keeps_the_last_good_policy() {
    let mesh = Mesh::start(ALLOW_A).await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let policy = mesh.pki.path("policy.toml");
    replace(&policy, "[[rule]]\nname = \"x\"\nacton = \"allow\"\n");
    for _ in 0..40 {
        let metrics = mesh.server.admin("/metrics").await.text();
        if metric(&metrics, "idgate_policy_reloads_total{result=\"error\"}") >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = mesh.server.admin("/metrics").await.text();
    assert!(
        metric(&metrics, "idgate_policy_reloads_total{result=\"error\"}") >= 1.0,
        "{metrics}"
    );
    let reply = get(&client.url("/a"), &[("x-request-id", "after-broken")]).await;
    assert_eq!(reply.status, 200, "the old policy must stay in force");
    replace(&policy, DENY_A);
    until_status(&client, "/a", 403).await;
}

#[tokio::test]
async fn identity_files_are_reloaded_for_new_handshakes() {
    let mesh = Mesh::start(ALLOW_A).await;
    let before = mesh.server.admin("/identity").await.text();
    let cert = mesh.pki.svid(SERVER_ID);
    replace(&mesh.pki.path("server-key.pem"), &cert.key_pem);
    replace(&mesh.pki.path("server.pem"), &cert.chain_pem);
    let mut after = before.clone();
    for _ in 0..40 {
        after = mesh.server.admin("/identity").await.text();
        if after != before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let serial =
        |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap()["serial"].clone();
    assert_ne!(
        serial(&before),
        serial(&after),
        "the new SVID should be in use"
    );
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    assert_eq!(get(&client.url("/a"), &[]).await.status, 200);
}

#[tokio::test]
async fn audit_mode_lets_denied_requests_through_and_logs_them() {
    let policy = format!("mode = \"audit\"\n{DENY_A}");
    let mesh = Mesh::start(&policy).await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let reply = get(&client.url("/a"), &[("x-request-id", "audit-1")]).await;
    assert_eq!(reply.status, 200, "audit mode must not block");
    let line = mesh.server.decision("audit-1").await;
    assert_eq!(line["decision"], "audit_deny");
    assert_eq!(line["rule"], "close-a");
    let reply = get(&client.url("/c"), &[("x-request-id", "audit-2")]).await;
    assert_eq!(reply.status, 200);
    let line = mesh.server.decision("audit-2").await;
    assert_eq!(line["decision"], "audit_deny");
    assert_eq!(line["rule"], serde_json::Value::Null);
    let metrics = mesh.server.admin("/metrics").await.text();
    let label = format!("idgate_requests_total{{listener=\"api\",direction=\"inbound\",source=\"{FRONTEND_ID}\",decision=\"audit_deny\"}}");
    assert_eq!(metric(&metrics, &label), 2.0, "{metrics}");
}

#[tokio::test]
async fn an_audit_rule_only_logs_what_it_would_do() {
    let policy = format!("{ALLOW_A}\n[[rule]]\nname = \"trial-close-b\"\naction = \"deny\"\npaths = [\"/b\"]\naudit = true\n");
    let mesh = Mesh::start(&policy).await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let reply = get(&client.url("/b"), &[("x-request-id", "trial-1")]).await;
    assert_eq!(reply.status, 200);
    let line = mesh.server.decision("trial-1").await;
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["audit_rule"], "trial-close-b");
}

#[tokio::test]
async fn break_glass_rules_expire_and_are_flagged() {
    let expires = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(1500);
    let expires = expires
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let policy = format!("[[rule]]\nname = \"incident-42\"\naction = \"allow\"\nfrom = [\"{FRONTEND_ID}\"]\nexpires = \"{expires}\"\n");
    let mesh = Mesh::start(&policy).await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let reply = get(&client.url("/x"), &[("x-request-id", "glass-1")]).await;
    assert_eq!(reply.status, 200);
    let line = mesh.server.decision("glass-1").await;
    assert_eq!(line["rule"], "incident-42");
    assert_eq!(line["break_glass"], true);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let reply = get(&client.url("/x"), &[("x-request-id", "glass-2")]).await;
    assert_eq!(reply.status, 403, "the rule expired");
    let line = mesh.server.decision("glass-2").await;
    assert_eq!(line.get("break_glass"), None);
}

#[tokio::test]
async fn an_expiring_break_glass_rule_ends_http2_connections_it_alone_admits() {
    let lifetime = Duration::from_secs(2);
    let expires = (time::OffsetDateTime::now_utc() + lifetime)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let expires_at = std::time::Instant::now() + lifetime;
    let policy = format!("[[rule]]\nname = \"incident-43\"\naction = \"allow\"\nfrom = [\"{FRONTEND_ID}\"]\nexpires = \"{expires}\"\n");
    let mesh = Mesh::start(&policy).await;
    let cert = mesh.pki.svid(FRONTEND_ID);
    let config = tls_client(&mesh.pki.ca.root_pem(), Some(&cert), &[b"h2"]);
    let (mut sender, connection) = h2_connection(mesh.server.inbound(), config).await;
    assert_eq!(
        sender.send_request(empty_get("/x")).await.unwrap().status(),
        200
    );
    assert!(
        std::time::Instant::now() < expires_at,
        "the test set up too slowly"
    );
    let bound = expires_at + Duration::from_secs(5);
    let ended = tokio::time::timeout_at(bound.into(), connection).await;
    assert!(
        ended.is_ok(),
        "GOAWAY should end the connection once the only rule admitting its peer expired"
    );
}

#[tokio::test]
async fn rule_hits_are_counted_and_listed() {
    let mesh = Mesh::start(DENY_A).await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    for _ in 0..3 {
        assert_eq!(get(&client.url("/b"), &[]).await.status, 200);
    }
    assert_eq!(get(&client.url("/a"), &[]).await.status, 403);
    let metrics = mesh.server.admin("/metrics").await.text();
    assert_eq!(
        metric(
            &metrics,
            "idgate_rule_hits_total{rule=\"frontend-a\",decision=\"allow\"}"
        ),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "idgate_rule_hits_total{rule=\"close-a\",decision=\"deny\"}"
        ),
        1.0,
        "{metrics}"
    );
    let listing = mesh.server.admin("/policy").await;
    assert_eq!(listing.status, 200);
    let text = listing.text();
    assert!(
        text.contains("frontend-a") && text.contains("close-a"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&text).expect("/policy is JSON");
    let rendered = json.to_string();
    assert!(rendered.contains("\"last_hit\""), "{rendered}");
}

const NOBODY: &str = "default = \"deny\"\n";

#[tokio::test]
async fn a_reload_ends_http2_connections_of_peers_it_no_longer_admits() {
    let mesh = Mesh::start(ALLOW_A).await;
    let cert = mesh.pki.svid(FRONTEND_ID);
    let config = tls_client(&mesh.pki.ca.root_pem(), Some(&cert), &[b"h2"]);
    let (mut sender, connection) = h2_connection(mesh.server.inbound(), config).await;
    let request = || empty_get("/a");
    assert_eq!(sender.send_request(request()).await.unwrap().status(), 200);
    // A reload that still admits the peer leaves the connection alone.
    replace(&mesh.pki.path("policy.toml"), DENY_A);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !connection.is_finished(),
        "the peer is still admitted (it may use /b)"
    );
    assert_eq!(sender.send_request(request()).await.unwrap().status(), 403);
    replace(&mesh.pki.path("policy.toml"), NOBODY);
    let ended = tokio::time::timeout(Duration::from_secs(3), connection).await;
    assert!(
        ended.is_ok(),
        "GOAWAY should end the connection of a peer the policy no longer admits"
    );
}

/// An app whose every response drips a byte every 500 ms for 20 s (a long download, or a
/// watch that a gRPC client keeps open).
async fn dripping_app() -> std::net::SocketAddr {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let (addr, _) = counting_server(|stream| async move {
        let service = hyper::service::service_fn(|_request| async {
            let drips = futures_util::stream::unfold(0u32, |sent| async move {
                if sent == 40 {
                    return None;
                }
                if sent > 0 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                let drip = Frame::data(bytes::Bytes::from_static(b"."));
                Some((Ok::<_, std::convert::Infallible>(drip), sent + 1))
            });
            Ok::<_, std::convert::Infallible>(http::Response::new(StreamBody::new(drips)))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await;
    })
    .await;
    addr
}

#[tokio::test]
async fn a_reload_cuts_streams_a_revoked_peer_keeps_open_after_the_drain() {
    use http_body_util::BodyExt;
    let app = dripping_app().await;
    let drain = Duration::from_secs(2);
    let mesh = Mesh::start_upstream(
        ALLOW_A,
        &format!("http://{app}"),
        "timeouts = { drain = \"2s\" }",
    )
    .await;
    let cert = mesh.pki.svid(FRONTEND_ID);
    let config = tls_client(&mesh.pki.ca.root_pem(), Some(&cert), &[b"h2"]);
    let (mut sender, connection) = h2_connection(mesh.server.inbound(), config).await;
    let response = sender.send_request(empty_get("/a")).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body
        .frame()
        .await
        .expect("a first drip")
        .expect("a first drip");
    assert!(first.is_data());
    replace(&mesh.pki.path("policy.toml"), NOBODY);
    // The reload lands within a second; the drain then gives the stream 2 s.
    let bound = Duration::from_secs(1) + drain + Duration::from_secs(3);
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(bound, async {
        let mut drips = 1;
        loop {
            match body.frame().await {
                Some(Ok(_)) => drips += 1,
                Some(Err(error)) => return (drips, Some(error)),
                None => return (drips, None),
            }
        }
    })
    .await;
    let Ok((drips, error)) = ended else {
        panic!("the stream of a revoked peer was still open {bound:?} after the reload");
    };
    assert!(
        drips < 40,
        "the stream ran to its end ({drips} drips, {:?}): it was not cut",
        started.elapsed()
    );
    assert!(
        error.is_some(),
        "a cut stream ends in an error, not a clean end"
    );
    let closed = tokio::time::timeout(Duration::from_secs(1), connection).await;
    assert!(closed.is_ok(), "the connection itself must be closed");
}

#[tokio::test]
async fn a_reload_cuts_tcp_relays_it_no_longer_allows() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (echo, _) = tcp_echo().await;
    let mesh = Mesh::start_tcp(
        &format!(
            "[[rule]]\nname = \"db-clients\"\naction = \"allow\"\nfrom = [\"{FRONTEND_ID}\"]\n"
        ),
        &format!("tcp://{echo}"),
    )
    .await;
    let client = mesh
        .client_with("frontend", FRONTEND_ID, &[SERVER_ID], "protocol = \"tcp\"")
        .await;
    let mut stream = tokio::net::TcpStream::connect(client.outbound())
        .await
        .unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    replace(&mesh.pki.path("policy.toml"), NOBODY);
    let mut rest = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the relay must be closed: {read:?}"
    );
    let lines = mesh.server.decision_lines(1).await;
    let revoked = lines
        .iter()
        .find(|l| l["decision"] == "deny")
        .expect("a deny line for the revoked relay");
    assert!(
        revoked["reason"].as_str().unwrap().contains("revoked"),
        "{revoked}"
    );
}

#[tokio::test]
async fn a_kubernetes_configmap_swap_is_picked_up() {
    use std::os::unix::fs::symlink;
    let mesh = Mesh::start(ALLOW_A).await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    // Lay the policy out the way a ConfigMap volume does: policy.toml -> ..data/policy.toml,
    // ..data -> ..<timestamp>/, then swap ..data atomically to a new timestamped directory.
    let dir = mesh.pki.dir.path();
    std::fs::create_dir(dir.join("..2026_11_26_01")).unwrap();
    std::fs::write(dir.join("..2026_11_26_01/policy.toml"), ALLOW_A).unwrap();
    symlink("..2026_11_26_01", dir.join("..data")).unwrap();
    let tmp = dir.join("policy.link");
    symlink("..data/policy.toml", &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("policy.toml")).unwrap();
    assert_eq!(get(&client.url("/a"), &[]).await.status, 200);

    std::fs::create_dir(dir.join("..2026_11_26_02")).unwrap();
    std::fs::write(dir.join("..2026_11_26_02/policy.toml"), DENY_A).unwrap();
    symlink("..2026_11_26_02", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..2026_11_26_01")).unwrap();
    until_status(&client, "/a", 403).await;
}

#[tokio::test]
async fn pooled_connections_follow_a_rotated_client_svid() {
    let mesh = Mesh::start(ALLOW_A).await;
    let client = mesh.client("frontend", FRONTEND_ID, &[SERVER_ID]).await;
    let xfcc = |reply: &Reply| {
        reply.echoed()["headers"]["x-forwarded-client-cert"][0]
            .as_str()
            .unwrap()
            .to_string()
    };
    let before = xfcc(&get(&client.url("/a"), &[]).await);
    let serial = || async { client.admin("/identity").await.text() };
    let old_identity = serial().await;
    let cert = mesh.pki.svid(FRONTEND_ID);
    replace(&mesh.pki.path("frontend-key.pem"), &cert.key_pem);
    replace(&mesh.pki.path("frontend.pem"), &cert.chain_pem);
    for _ in 0..40 {
        if serial().await != old_identity {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(
        serial().await,
        old_identity,
        "the client's SVID was reloaded"
    );
    let after = xfcc(&get(&client.url("/a"), &[]).await);
    assert_ne!(before, after, "a request after the rotation must present the new certificate, not ride the old pooled connection");
}

/// A reload compiles off the runtime: with one worker (the default), a request made while
/// a 20,000-rule policy compiles is answered before the reload ends. A reload on the
/// runtime's own thread would hold the request until it had finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_served_while_a_big_policy_compiles() {
    let pki = Pki::new(TD);
    let idgate = RunningIdgate::start_inbound_to_echo(&pki, "").await;
    let client = tls_client(
        &pki.ca.root_pem(),
        Some(&pki.svid(FRONTEND_ID)),
        &[b"http/1.1"],
    );
    replace(&pki.path("policy.toml"), &many_rules_policy(20_000));
    assert!(
        idgate
            .wait_for("files changed: reloading", Duration::from_secs(10))
            .is_some(),
        "no reload began"
    );
    let reply = mtls_send(idgate.address("inbound"), client, "GET", "/", &[])
        .await
        .expect("a request during the reload");
    assert!(
        idgate.wait_for("policy reloaded", Duration::ZERO).is_none(),
        "the reload ended before the request was answered: it held up the runtime"
    );
    assert_eq!(reply.status, 200, "the old policy admits the frontend");
    assert!(
        idgate
            .wait_for("policy reloaded", Duration::from_secs(60))
            .is_some(),
        "the big policy was not loaded"
    );
}
