//! Rotation under load with a real SPIRE: SVIDs with a 20 s TTL rotate every few seconds
//! while a client keeps sending requests through outbound -> inbound. Not one request may
//! fail; pooled connections keep working, and new handshakes present the new SVID (the
//! client certificate hash the upstream sees in XFCC changes at least twice).

mod spire;
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use spire::{free_addr, h2_once, xfcc_field, Idgate, Spire};

const SERVER_ID: &str = "spiffe://example.org/ns/billing/sa/api";
const CLIENT_ID: &str = "spiffe://example.org/ns/shop/sa/frontend";
const TTL: u32 = 20;

const POLICY: &str = r#"
mode = "enforce"
default = "deny"

[[rule]]
name = "frontend"
action = "allow"
from = ["spiffe://example.org/ns/shop/sa/frontend"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_loses_no_request() {
    let spire = tokio::task::block_in_place(|| {
        let spire = Spire::start(TTL);
        spire.register(SERVER_ID, 4201, TTL);
        spire.register(CLIENT_ID, 4202, TTL);
        spire
    });
    let echo = idgate::cli::echo::spawn(([127, 0, 0, 1], 0).into())
        .await
        .expect("echo");
    let inbound = free_addr();
    let server = Idgate::spawn(
        &spire,
        "server",
        4201,
        &format!("[[inbound]]\nname = \"api\"\nlisten = \"{inbound}\"\nupstream = \"http://{echo}\"\npolicy = \"policy.toml\"\n"),
        &[("policy.toml", POLICY)],
    );
    // Two outbound listeners: HTTP (pooled connections to the peer) and TCP (one new mTLS
    // handshake per app connection, so each one shows which SVID is in use right now).
    let (http_out, tcp_out) = (free_addr(), free_addr());
    let client = Idgate::spawn(
        &spire,
        "client",
        4202,
        &format!(
            "[[outbound]]\nname = \"pooled\"\nlisten = \"{http_out}\"\ntarget = \"{inbound}\"\nserver_ids = [\"{SERVER_ID}\"]\n\n\
             [[outbound]]\nname = \"fresh\"\nlisten = \"{tcp_out}\"\ntarget = \"{inbound}\"\nserver_ids = [\"{SERVER_ID}\"]\nprotocol = \"tcp\"\n"
        ),
        &[],
    );
    server.ready().await;
    client.ready().await;
    let first_serial = client.serial().await;

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut pooled = Vec::new();
    for worker in 0..2 {
        let (stop, sent) = (stop.clone(), sent.clone());
        pooled.push(tokio::spawn(async move {
            let http = support::plain_client();
            let url = format!("http://{http_out}/pooled/{worker}");
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let reply = support::send(&http, "GET", &url, &[], Bytes::new()).await;
                sent.fetch_add(1, Ordering::Relaxed);
                if reply.status != StatusCode::OK {
                    failures.push(format!("{}: {}", reply.status, reply.text()));
                }
            }
            failures
        }));
    }

    let started = Instant::now();
    let mut hashes: Vec<String> = Vec::new();
    let mut fresh_failures = Vec::new();
    let mut fresh = 0;
    loop {
        match h2_once(tcp_out, "/fresh").await {
            Ok((StatusCode::OK, Some(xfcc))) => {
                assert_eq!(xfcc_field(&xfcc, "URI"), Some(CLIENT_ID), "{xfcc}");
                let hash = xfcc_field(&xfcc, "Hash").expect("Hash").to_string();
                if hashes.last() != Some(&hash) {
                    hashes.push(hash);
                }
            }
            other => fresh_failures.push(format!("{other:?}")),
        }
        fresh += 1;
        let elapsed = started.elapsed();
        if (hashes.len() >= 3 && elapsed > Duration::from_secs(20))
            || elapsed > Duration::from_secs(45)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut pooled_failures = Vec::new();
    for worker in pooled {
        pooled_failures.extend(worker.await.expect("worker"));
    }
    let sent = sent.load(Ordering::Relaxed);
    eprintln!(
        "{:?}: {sent} pooled requests, {fresh} fresh connections, {} client certificates seen",
        started.elapsed(),
        hashes.len()
    );
    assert!(
        pooled_failures.is_empty(),
        "pooled requests failed: {pooled_failures:?}"
    );
    assert!(
        fresh_failures.is_empty(),
        "fresh connections failed: {fresh_failures:?}"
    );
    assert!(sent > 100, "the load ran ({sent} requests)");
    assert!(
        hashes.len() >= 3,
        "the client certificate changed {} times, expected at least 2",
        hashes.len().saturating_sub(1)
    );
    assert_ne!(client.serial().await, first_serial);
    assert!(client.metric("idgate_svid_rotations_total").await >= 2.0);
    assert!(server.metric("idgate_svid_rotations_total").await >= 2.0);
}
