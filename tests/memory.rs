//! The `idgate` binary gives back the memory a spike of connections took: its allocator
//! (jemalloc, README: Memory) purges freed pages, so RSS falls back near the idle level
//! instead of staying at the peak, as it does with glibc's allocator. A reloaded policy
//! frees the one it replaced, the one loaded at start included. HTTP/2 header tables keep
//! the values they index, never the read buffers those came from.
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

/// `count` HTTP/1.1 mTLS connections to `inbound`, each with one request served (200), kept
/// open as long as the returned senders and tasks live.
async fn served_http1_connections(
    inbound: std::net::SocketAddr,
    client: &std::sync::Arc<rustls::ClientConfig>,
    count: usize,
) -> Vec<(
    hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    ConnectionTask,
)> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let (mut sender, task) = h1_connection(inbound, client.clone()).await;
        let response = sender.send_request(empty_get("/")).await.expect("request");
        assert_eq!(response.status(), 200);
        held.push((sender, task));
    }
    held
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
    drop(served_http1_connections(inbound, &client, 1).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = status_kib(&idgate, "VmRSS");

    // A spike: many connections, each with one request served, held open together.
    let held = served_http1_connections(inbound, &client, CONNECTIONS).await;
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

/// What an idle sidecar with a one-rule policy may keep of anonymous memory (heap,
/// stacks, queues), in KiB. The test build keeps about 2.6 MiB (a release build 1.5); a
/// queue sized for the worst case (the diagnostics writer's, at tracing-appender's
/// default of 128,000 lines) took 4 MiB more, unseen until a benchmark read the idle RSS.
const IDLE_ANON_KIB: u64 = 3584;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sidecar_keeps_little_anonymous_memory() {
    let pki = Pki::new(TD);
    let idgate = RunningIdgate::start_inbound_to_echo(&pki, "").await;
    let client = frontend_client(&pki);
    drop(served_http1_connections(idgate.address("inbound"), &client, 1).await);
    let anon = settled_anon_kib(&idgate).await;
    assert!(
        anon <= IDLE_ANON_KIB,
        "an idle sidecar keeps {anon} KiB of anonymous memory (bound {IDLE_ANON_KIB} KiB)"
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

/// HTTP/2 connections and requests on each in the header-table test.
const HTTP2_CONNECTIONS: usize = 32;
const REQUESTS_EACH: usize = 40;

/// An app that answers every request with a short value it never sends again (`x-id`),
/// as request and trace IDs are.
async fn unique_id_app() -> std::net::SocketAddr {
    use std::sync::atomic::{AtomicU64, Ordering};
    let next = std::sync::Arc::new(AtomicU64::new(0));
    let (addr, _) = counting_server(move |stream| {
        let next = next.clone();
        async move {
            let service = hyper::service::service_fn(move |_request| {
                let id = next.fetch_add(1, Ordering::Relaxed);
                async move {
                    http::Response::builder()
                        .header("x-id", id)
                        .body(http_body_util::Empty::<bytes::Bytes>::new())
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        }
    })
    .await;
    addr
}

/// One GET on every connection at once.
async fn gets_on_each(
    senders: &mut [hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>],
) {
    futures_util::future::join_all(senders.iter_mut().map(|sender| async move {
        let response = sender.send_request(empty_get("/")).await.expect("response");
        assert_eq!(response.status(), 200);
        assert!(response.headers().contains_key("x-id"));
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_header_tables_do_not_keep_app_read_buffers() {
    // The inbound's HPACK encoder indexes each response's new `x-id`. Values parsed from
    // the app's HTTP/1.1 responses are slices of the app connection's read buffer; a table
    // that kept those buffers held about 8 KiB per indexed response on every idle
    // connection: 6.3-6.5 MiB more here (debug build), against 0.9-1.0 MiB once each
    // response's values are copied out (0.6-0.7 MiB when the app repeats one `x-id`).
    let pki = Pki::new(TD);
    let idgate =
        RunningIdgate::start_inbound_to(&pki, unique_id_app().await, ALLOW_ALL_FRONTEND, "");
    let inbound = idgate.address("inbound");
    let client = tls_client(&pki.ca.root_pem(), Some(&pki.svid(FRONTEND_ID)), &[b"h2"]);
    let mut senders = Vec::with_capacity(HTTP2_CONNECTIONS);
    for _ in 0..HTTP2_CONNECTIONS {
        senders.push(h2_connection(inbound, client.clone()).await.0);
    }
    gets_on_each(&mut senders).await;
    let before = settled_anon_kib(&idgate).await;
    for _ in 0..REQUESTS_EACH {
        gets_on_each(&mut senders).await;
    }
    let after = settled_anon_kib(&idgate).await;
    let kept = after.saturating_sub(before);
    assert!(
        kept <= 2048,
        "{HTTP2_CONNECTIONS} idle HTTP/2 connections keep {kept} KiB more after {REQUESTS_EACH} requests each (before {before}, after {after})"
    );
}

/// A peer inbound for the outbound-only test: TLS as `SERVER_ID`, HTTP/2, answers 200.
async fn http2_peer(pki: &Pki) -> std::net::SocketAddr {
    let service = hyper::service::service_fn(|_request| async {
        http::Response::builder().body(http_body_util::Empty::<bytes::Bytes>::new())
    });
    let http2 = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    tls_http2_peer(pki, http2, service).await
}

/// The binary with one outbound listener to an [`http2_peer`].
async fn start_outbound_to_http2_peer(pki: &Pki) -> RunningIdgate {
    let peer = http2_peer(pki).await;
    let config = pki.path("idgate.toml");
    let toml = format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n",
        pki.outbound_toml("frontend", FRONTEND_ID, peer, &[SERVER_ID])
    );
    std::fs::write(&config, toml).expect("write config");
    RunningIdgate::start(&config)
}

/// `count` plain HTTP/1.1 connections from the app to `outbound`, open while the senders live.
async fn app_connections(outbound: std::net::SocketAddr, count: usize) -> Vec<Sender> {
    let mut senders = Vec::with_capacity(count);
    for _ in 0..count {
        let tcp = tokio::net::TcpStream::connect(outbound)
            .await
            .expect("connect");
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .expect("HTTP/1.1 handshake");
        tokio::spawn(connection);
        senders.push(sender);
    }
    senders
}

/// HTTP/1.1 connections from the app in the outbound's header-table test, and the
/// requests each carries before the measurement starts.
const APP_CONNECTIONS: usize = 32;
const WARM_UP_ROUNDS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbound_header_table_does_not_keep_app_read_buffers() {
    // Every request carries a short value seen once (`x-t`), which the outbound's HPACK
    // encoder indexes on its connection to the peer. Values parsed from the app's
    // HTTP/1.1 requests are slices of that app connection's read buffer, here filled by a
    // 6 KB header too large to index; a table that kept the buffers held one per request
    // it still indexes (about 100: `x-t` alone takes room): 0.7-0.8 MiB more here (debug
    // build), against 0-0.06 MiB once the indexable values are copied out.
    let pki = Pki::new(TD);
    let idgate = start_outbound_to_http2_peer(&pki).await;
    let mut senders = app_connections(idgate.address("outbound"), APP_CONNECTIONS).await;
    let mut next = 0u64;
    let mut traced_gets_on_each = async |senders: &mut [Sender], unique: bool| {
        futures_util::future::join_all(senders.iter_mut().map(|sender| {
            next += u64::from(unique);
            let request = http::Request::get("http://app/")
                .header("x-request-id", "one-for-all")
                .header("x-pad", "p".repeat(6000))
                .header("x-t", next)
                .body(http_body_util::Full::default())
                .expect("request");
            async move {
                sender.ready().await.expect("connection ready");
                let response = sender.send_request(request).await.expect("response");
                assert_eq!(response.status(), 200);
            }
        }))
        .await;
    };
    // Until the app connections' read buffers have grown to what these requests need
    // (one value for `x-t`: a single table entry).
    for _ in 0..WARM_UP_ROUNDS {
        traced_gets_on_each(&mut senders, false).await;
    }
    let before = settled_anon_kib(&idgate).await;
    for _ in 0..REQUESTS_EACH {
        traced_gets_on_each(&mut senders, true).await;
    }
    let after = settled_anon_kib(&idgate).await;
    let kept = after.saturating_sub(before);
    assert!(
        kept <= 384,
        "the outbound keeps {kept} KiB more after {REQUESTS_EACH} requests on each of {APP_CONNECTIONS} app connections (before {before}, after {after})"
    );
}

/// Idle HTTP/1.1 connections held in the per-connection test.
const HELD: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_connection_costs_at_most_26_kib() {
    // hyper's HTTP/1.1 reader keeps its 8 KiB buffer, plus the TLS session, the connection
    // task and hyper's state: 20 KiB of anonymous memory each here (debug build).
    // Detecting the protocol instead of taking ALPN's word for it read 24 bytes ahead of
    // the reader, which then doubled its buffer: 33 KiB each.
    let pki = Pki::new(TD);
    let idgate = RunningIdgate::start_inbound_to_echo(&pki, "").await;
    let inbound = idgate.address("inbound");
    let client = frontend_client(&pki);
    let _warm = served_http1_connections(inbound, &client, 1).await;
    let before = settled_anon_kib(&idgate).await;
    let _held = served_http1_connections(inbound, &client, HELD).await;
    let after = settled_anon_kib(&idgate).await;
    let each = after.saturating_sub(before) / HELD as u64;
    assert!(
        each <= 26,
        "an idle HTTP/1.1 mTLS connection costs {each} KiB (anonymous memory {before} KiB before {HELD} connections, {after} KiB with them)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_app_connection_to_the_outbound_costs_at_most_16_kib() {
    // A plain connection's protocol is told by its first bytes, peeked at: hyper's
    // HTTP/1.1 reader keeps its 8 KiB buffer, plus the connection task and hyper's state,
    // 11 KiB of anonymous memory each here (debug build). Detection that read them ahead
    // of the reader made it double its buffer: 24 KiB each.
    let pki = Pki::new(TD);
    let idgate = start_outbound_to_http2_peer(&pki).await;
    let outbound = idgate.address("outbound");
    let get = || {
        http::Request::get("http://app/")
            .body(http_body_util::Full::default())
            .expect("request")
    };
    let one_request_on_each = async |senders: &mut [Sender]| {
        for sender in senders {
            let response = sender.send_request(get()).await.expect("response");
            assert_eq!(response.status(), 200);
        }
    };
    let mut warm = app_connections(outbound, 1).await;
    one_request_on_each(&mut warm).await;
    let before = settled_anon_kib(&idgate).await;
    let mut held = app_connections(outbound, HELD).await;
    one_request_on_each(&mut held).await;
    let after = settled_anon_kib(&idgate).await;
    let each = after.saturating_sub(before) / HELD as u64;
    assert!(
        each <= 16,
        "an idle HTTP/1.1 app connection costs {each} KiB (anonymous memory {before} KiB before {HELD} connections, {after} KiB with them)"
    );
}
