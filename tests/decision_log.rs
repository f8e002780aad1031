//! The decision log of the real binary. One that cannot be written (here `/dev/full`, a
//! disk that is always full) never stops requests, and is not silent: the failure is
//! logged once and counted. Requests the shutdown drain cuts still get their lines.
#![cfg(target_os = "linux")]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use support::process::RunningIdgate;
use support::*;
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn a_full_disk_under_the_decision_log_is_logged_and_counted_and_requests_still_pass() {
    let pki = Pki::new(TD);
    let idgate =
        RunningIdgate::start_inbound_to_echo(&pki, "[log]\ndecisions = \"/dev/full\"").await;
    let client = tls_client(
        &pki.ca.root_pem(),
        Some(&pki.svid(FRONTEND_ID)),
        &[b"http/1.1"],
    );

    let (mut sender, _task) = h1_connection(idgate.address("inbound"), client).await;
    for _ in 0..3 {
        let response = sender.send_request(empty_get("/")).await.expect("request");
        assert_eq!(response.status(), 200);
    }
    let logged = idgate.wait_for("cannot write the decision log", Duration::from_secs(5));
    let logged = logged.expect("no error logged for the failed decision-log write");
    assert!(logged.contains("No space left on device"), "{logged}");

    // More lines, written (and failing) in a later pass of the writer: counted, not logged.
    for _ in 0..3 {
        let response = sender.send_request(empty_get("/")).await.expect("request");
        assert_eq!(response.status(), 200);
    }
    let admin = idgate.admin();
    let mut failed = 0.0;
    for _ in 0..50 {
        let metrics = get(&format!("http://{admin}/metrics"), &[]).await.text();
        failed = metric(&metrics, "idgate_decision_log_write_errors_total");
        if failed >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(failed >= 2.0, "failed writes counted: {failed}");
    let again = idgate.wait_for("cannot write the decision log", Duration::from_millis(200));
    assert!(again.is_none(), "logged again: {again:?}");
}

/// A GET of `path` carrying `x-request-id: id`.
fn get_with_id(path: &str, id: &str) -> Request<http_body_util::Empty<Bytes>> {
    Request::get(format!("https://localhost{path}"))
        .header("x-request-id", id)
        .body(http_body_util::Empty::new())
        .expect("request")
}

/// The decision lines of the file at `path` once it has one whose `request_id` is `id`
/// (waiting up to 10 s).
fn lines_once_logged(path: &Path, id: &str) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON decision line"))
            .collect();
        if lines.iter().any(|line| line["request_id"] == id) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{id} not logged in {path:?}: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_shutdown_drain_cuts_are_logged_and_the_drain_says_how_many() {
    let pki = Pki::new(TD);
    // An app that reads requests and never answers.
    let (app, accepted) = counting_server(|mut stream| async move {
        let mut buf = [0u8; 4096];
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    let log = pki.path("decisions.log");
    std::fs::write(pki.path("policy.toml"), ALLOW_ALL_FRONTEND).expect("write policy");
    let config = pki.path("idgate.toml");
    let toml = format!(
        "{}\n[[inbound]]\nname = \"api\"\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{app}\"\npolicy = \"policy.toml\"\ntimeouts = {{ drain = \"1s\" }}\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\ndecisions = {log:?}\n",
        pki.identity_toml("server", SERVER_ID),
    );
    std::fs::write(&config, toml).expect("write config");
    let mut idgate = RunningIdgate::start(&config);
    let inbound = idgate.address("inbound");
    let client =
        |alpn: &[u8]| tls_client(&pki.ca.root_pem(), Some(&pki.svid(FRONTEND_ID)), &[alpn]);
    // One request on HTTP/1.1 and one on HTTP/2 (whose streams run as tasks of their own).
    let (mut h1, _h1_task) = h1_connection(inbound, client(b"http/1.1")).await;
    let (mut h2, _h2_task) = h2_connection(inbound, client(b"h2")).await;
    let h1_sent =
        tokio::spawn(async move { h1.send_request(get_with_id("/slow", "cut-h1")).await });
    let h2_sent =
        tokio::spawn(async move { h2.send_request(get_with_id("/slow", "cut-h2")).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while accepted.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "the requests did not reach the app"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    idgate.signal("TERM");
    let warned = idgate.wait_for("drain timed out", Duration::from_secs(10));
    let warned = warned.expect("no warning that the drain cut requests");
    assert!(warned.contains("cutting 2 request(s)"), "{warned}");
    let status = tokio::task::spawn_blocking(move || idgate.wait())
        .await
        .expect("wait");
    // SPEC: 0 after the drain on SIGTERM; the warning says what it cut.
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        h1_sent.await.expect("task").is_err(),
        "HTTP/1.1 got a response"
    );
    assert!(
        h2_sent.await.expect("task").is_err(),
        "HTTP/2 got a response"
    );

    let lines = lines_once_logged(&log, "cut-h2");
    for id in ["cut-h1", "cut-h2"] {
        let mine: Vec<_> = lines.iter().filter(|l| l["request_id"] == id).collect();
        assert_eq!(mine.len(), 1, "{id}: one line: {lines:?}");
        let line = mine[0];
        assert_eq!(line["status"], 503, "{line}");
        assert_eq!(line["decision"], "allow", "{line}");
        let reason = line["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("after the drain: shutdown"), "{line}");
    }
}
