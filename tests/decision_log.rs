//! The decision log of the real binary. One that cannot be written (here `/dev/full`, a
//! disk that is always full) never stops requests, and is not silent: the failure is
//! logged once and counted. Requests the shutdown drain cuts still get their lines. SIGHUP
//! reopens the log's file, for logrotate.
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

/// The request IDs of `lines`.
fn ids(lines: &[serde_json::Value]) -> Vec<&str> {
    lines
        .iter()
        .filter_map(|line| line["request_id"].as_str())
        .collect()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_the_decision_log_for_logrotate_and_a_failed_reopen_writes_on() {
    let pki = Pki::new(TD);
    let dir = pki.path("logs");
    std::fs::create_dir(&dir).expect("mkdir logs");
    let log = dir.join("decisions.log");
    let idgate =
        RunningIdgate::start_inbound_to_echo(&pki, &format!("[log]\ndecisions = {log:?}")).await;
    let client = tls_client(
        &pki.ca.root_pem(),
        Some(&pki.svid(FRONTEND_ID)),
        &[b"http/1.1"],
    );
    let (mut sender, _task) = h1_connection(idgate.address("inbound"), client).await;
    let mut send = async |id: &str| {
        let response = sender.send_request(get_with_id("/", id)).await;
        assert_eq!(response.expect("response").status(), 200);
    };

    send("before").await;
    lines_once_logged(&log, "before");
    // logrotate: rename the file, then `postrotate kill -HUP`.
    let rotated = dir.join("decisions.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    send("rotating").await;
    // Until the reopen, lines go on to the renamed file.
    lines_once_logged(&rotated, "rotating");
    idgate.signal("HUP");
    let reopened = idgate.wait_for("reopened the decision log", Duration::from_secs(10));
    assert!(reopened.is_some(), "no reopen logged");
    send("after").await;
    let new = lines_once_logged(&log, "after");
    let old = lines_once_logged(&rotated, "before");
    assert_eq!(ids(&new), ["after"], "the new file: {new:?}");
    assert_eq!(
        ids(&old),
        ["before", "rotating"],
        "the rotated file: {old:?}"
    );

    // The directory goes away: the reopen fails, and the open file is written on.
    let moved = pki.path("logs-moved");
    std::fs::rename(&dir, &moved).expect("move the directory");
    idgate.signal("HUP");
    let failed = idgate.wait_for("cannot reopen the decision log", Duration::from_secs(10));
    assert!(failed.is_some(), "no error logged for the failed reopen");
    send("kept").await;
    let kept = lines_once_logged(&moved.join("decisions.log"), "kept");
    assert_eq!(ids(&kept), ["after", "kept"], "{kept:?}");
    let metrics = get(&format!("http://{}/metrics", idgate.admin()), &[])
        .await
        .text();
    assert_eq!(
        metric(&metrics, "idgate_decision_log_reopen_errors_total"),
        1.0,
        "{metrics}"
    );
}
