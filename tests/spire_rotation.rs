//! Rotation under load with a real SPIRE: SVIDs with a 20 s TTL rotate every few seconds
//! while a client keeps sending requests through outbound -> inbound. Not one request may
//! fail; pooled connections keep working, and new handshakes present the new SVID (the
//! client certificate hash the upstream sees in XFCC changes at least twice).

mod spire;
mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use spire::{h2_once, xfcc_field, PooledLoad, TwoSidecars, ALLOW_CLIENT, CLIENT_ID};

const TTL: u32 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_loses_no_request() {
    let mesh = TwoSidecars::start(TTL, 4201, 4202, ALLOW_CLIENT).await;
    let (server, client, tcp_out) = (&mesh.server, &mesh.client, mesh.tcp_out);
    let first_serial = client.serial().await;

    let load = PooledLoad::start(
        (0..2)
            .map(|worker| format!("http://{}/pooled/{worker}", mesh.http_out))
            .collect(),
        None,
    );

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
        if elapsed > Duration::from_secs(45) {
            break;
        }
        // Both sidecars rotate on their own SPIRE schedule (about every TTL/2): keep the
        // load running until each has rotated at least twice, not just the client.
        if hashes.len() >= 3
            && elapsed > Duration::from_secs(20)
            && server.metric("idgate_svid_rotations_total").await >= 2.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (pooled_failures, sent) = load.stop().await;
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
