//! The `idgate` binary gives back the memory a spike of connections took: its allocator
//! (jemalloc, README: Memory) purges freed pages, so RSS falls back near the idle level
//! instead of staying at the peak, as it does with glibc's allocator. A reloaded policy
//! frees the one it replaced, the one loaded at start included.
#![cfg(target_os = "linux")]

mod support;

use std::time::{Duration, Instant};

use support::process::RunningIdgate;
use support::*;

const CONNECTIONS: usize = 1000;

/// Rules in the big policy of the reload test: enough that a kept copy shows in RSS.
const RULES: usize = 10_000;

/// An HTTP/1.1 mTLS client presenting the frontend's SVID.
fn frontend_client(pki: &Pki) -> std::sync::Arc<rustls::ClientConfig> {
    tls_client(
        &pki.ca.root_pem(),
        Some(&pki.svid(FRONTEND_ID)),
        &[b"http/1.1"],
    )
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `RssAnon`, ...).
fn status_kib(idgate: &RunningIdgate, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", idgate.id()))
        .expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc status"))
}

/// Resident anonymous memory (the heap, not the mapped binary) in KiB, once it has
/// settled: unchanged (within 64 KiB) for 2 s, since jemalloc purges freed pages about a
/// second after the free. At most 15 s.
async fn settled_anon_kib(idgate: &RunningIdgate) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut since = (Instant::now(), status_kib(idgate, "RssAnon"));
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = status_kib(idgate, "RssAnon");
        if now.abs_diff(since.1) > 64 {
            since = (Instant::now(), now);
        } else if since.0.elapsed() >= Duration::from_secs(2) || Instant::now() > deadline {
            return now;
        }
    }
}

/// `field` of `/proc/PID/status` once it is at most `bound` KiB, or its last reading after
/// 10 s: the allocator gives freed pages back about a second after the free.
async fn given_back_to(idgate: &RunningIdgate, field: &str, bound: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut now = status_kib(idgate, field);
    while now > bound && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        now = status_kib(idgate, field);
    }
    now
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_taken_by_a_spike_of_connections_is_given_back() {
    let pki = Pki::new(TD);
    let idgate = RunningIdgate::start_inbound_to_echo(&pki, "").await;
    let inbound = idgate.address("inbound");
    let client = frontend_client(&pki);

    // Warm up (first handshake, first request, upstream pool), then take the baseline.
    let (mut sender, _task) = h1_connection(inbound, client.clone()).await;
    let warm = sender.send_request(empty_get("/")).await.expect("warm-up");
    assert_eq!(warm.status(), 200);
    drop((sender, warm));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = status_kib(&idgate, "VmRSS");

    // A spike: many connections, each with one request served, held open together.
    let mut held = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let (mut sender, task) = h1_connection(inbound, client.clone()).await;
        let response = sender.send_request(empty_get("/")).await.expect("request");
        assert_eq!(response.status(), 200);
        held.push((sender, task));
    }
    let peak = status_kib(&idgate, "VmRSS");
    let grown = peak.saturating_sub(idle);
    assert!(
        grown > 8 * 1024,
        "{CONNECTIONS} held connections grew RSS by only {grown} KiB (idle {idle}, peak {peak}): the spike is too small to show anything"
    );
    drop(held);

    // Given back: within 10 s, at most a quarter of the growth stays resident.
    let bound = idle + grown / 4;
    let now = given_back_to(&idgate, "VmRSS", bound).await;
    assert!(
        now <= bound,
        "RSS stayed at {now} KiB after the connections closed (idle {idle}, peak {peak}, bound {bound})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_policy_frees_the_one_loaded_at_start() {
    let pki = Pki::new(TD);
    // What the big policy costs: the same sidecar with the small policy beside it.
    let small = RunningIdgate::start_inbound_to_echo(&pki, "").await;
    let small_anon = settled_anon_kib(&small).await;
    drop(small);
    let big = many_rules_policy(RULES);
    let idgate = RunningIdgate::start_inbound_with_policy(&pki, &big, "").await;
    let big_anon = settled_anon_kib(&idgate).await;
    let cost = big_anon.saturating_sub(small_anon);
    assert!(
        cost > 2 * 1024,
        "{RULES} rules cost only {cost} KiB (small policy {small_anon}, big {big_anon}): too little to show anything"
    );

    // Back to the small policy: the big one, loaded with the config, must be freed.
    std::fs::write(pki.path("policy.toml"), ALLOW_ALL_FRONTEND).expect("write policy");
    idgate.signal("HUP");
    assert!(
        idgate
            .wait_for("policy reloaded", Duration::from_secs(10))
            .is_some(),
        "SIGHUP should reload the policy"
    );
    // Given back: within 10 s, at most half of what the big policy cost stays.
    let bound = small_anon + cost / 2;
    let after = given_back_to(&idgate, "RssAnon", bound).await;
    assert!(
        after <= bound,
        "after the reload the sidecar kept {after} KiB of anonymous memory (small policy {small_anon}, with {RULES} rules {big_anon}, bound {bound}): the replaced policy is still held"
    );
}

/// Concurrent requests in the large-response test, and the size of each response.
const PARALLEL: usize = 8;
const LARGE: usize = 1 << 20;

/// A client connection sending whole bodies.
type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>;

/// Posts `size` bytes to the echo app on every connection at once; each gets them back.
async fn posts_on_each(senders: &mut [Sender], size: usize) {
    futures_util::future::join_all(senders.iter_mut().map(|sender| async move {
        sender.ready().await.expect("connection ready");
        let request = http::Request::post("https://localhost/upload")
            .body(http_body_util::Full::new(bytes::Bytes::from(vec![
                b'x';
                size
            ])))
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        assert_eq!(response.status(), 200);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(body.len(), size);
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_responses_leave_no_large_buffers_on_pooled_connections() {
    // Each of PARALLEL connections posts 1 MiB that the echo app sends back, so the inbound
    // pools up to PARALLEL app connections that have each read a 1 MiB response. A pooled
    // connection keeps its read buffer; uncapped, hyper grows it to about 400 KiB.
    let pki = Pki::new(TD);
    let idgate = RunningIdgate::start_inbound_to_echo(&pki, "").await;
    let inbound = idgate.address("inbound");
    let client = frontend_client(&pki);
    let mut senders = Vec::with_capacity(PARALLEL);
    for _ in 0..PARALLEL {
        let tls = mtls_connect(inbound, client.clone()).await.expect("mTLS");
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .expect("HTTP/1.1 handshake");
        tokio::spawn(connection);
        senders.push(sender);
    }
    posts_on_each(&mut senders, 1024).await;
    let before = settled_anon_kib(&idgate).await;
    for _ in 0..3 {
        posts_on_each(&mut senders, LARGE).await;
    }
    let after = settled_anon_kib(&idgate).await;
    let kept = after.saturating_sub(before);
    assert!(
        kept <= 2048,
        "{PARALLEL} connections that carried 1 MiB responses keep {kept} KiB (before {before}, after {after})"
    );
}
