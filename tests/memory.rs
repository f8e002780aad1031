//! The `idgate` binary gives back the memory a spike of connections took: its allocator
//! (jemalloc, README: Memory) purges freed pages, so RSS falls back near the idle level
//! instead of staying at the peak, as it does with glibc's allocator.
#![cfg(target_os = "linux")]

mod support;

use std::time::{Duration, Instant};

use support::process::RunningIdgate;
use support::*;

const CONNECTIONS: usize = 1000;

/// Resident set size of `idgate` in KiB, from `/proc/PID/status`.
fn rss_kib(idgate: &RunningIdgate) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", idgate.id()))
        .expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_taken_by_a_spike_of_connections_is_given_back() {
    let pki = Pki::new(TD);
    let idgate = RunningIdgate::start_inbound_to_echo(&pki, "").await;
    let inbound = idgate.address("inbound");
    let client = tls_client(
        &pki.ca.root_pem(),
        Some(&pki.svid(FRONTEND_ID)),
        &[b"http/1.1"],
    );

    // Warm up (first handshake, first request, upstream pool), then take the baseline.
    let (mut sender, _task) = h1_connection(inbound, client.clone()).await;
    let warm = sender.send_request(empty_get("/")).await.expect("warm-up");
    assert_eq!(warm.status(), 200);
    drop((sender, warm));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_kib(&idgate);

    // A spike: many connections, each with one request served, held open together.
    let mut held = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let (mut sender, task) = h1_connection(inbound, client.clone()).await;
        let response = sender.send_request(empty_get("/")).await.expect("request");
        assert_eq!(response.status(), 200);
        held.push((sender, task));
    }
    let peak = rss_kib(&idgate);
    let grown = peak.saturating_sub(idle);
    assert!(
        grown > 8 * 1024,
        "{CONNECTIONS} held connections grew RSS by only {grown} KiB (idle {idle}, peak {peak}): the spike is too small to show anything"
    );
    drop(held);

    // Given back: within 10 s, at most a quarter of the growth stays resident.
    let bound = idle + grown / 4;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut now = rss_kib(&idgate);
    while now > bound && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        now = rss_kib(&idgate);
    }
    assert!(
        now <= bound,
        "RSS stayed at {now} KiB after the connections closed (idle {idle}, peak {peak}, bound {bound})"
    );
}
