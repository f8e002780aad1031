//! The SPIRE agent goes away mid-run: idgate keeps serving with the SVID it has (pooled and
//! new connections alike), logs the outage once, and when the agent is back it reconnects
//! and picks up the next rotation.

mod spire;
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use spire::{eventually, free_addr, h2_once, Idgate, Spire};

const SERVER_ID: &str = "spiffe://example.org/ns/billing/sa/api";
const CLIENT_ID: &str = "spiffe://example.org/ns/shop/sa/frontend";
const TTL: u32 = 30;

const POLICY: &str = r#"
mode = "enforce"
default = "deny"

[[rule]]
name = "frontend"
action = "allow"
from = ["spiffe://example.org/ns/shop/sa/frontend"]
"#;

fn lines_with(log: &str, text: &str) -> usize {
    log.lines().filter(|l| l.contains(text)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_keeps_serving_and_reconnects() {
    let mut spire = tokio::task::block_in_place(|| {
        let spire = Spire::start(TTL);
        spire.register(SERVER_ID, 4301, TTL);
        spire.register(CLIENT_ID, 4302, TTL);
        spire
    });
    let echo = idgate::cli::echo::spawn(([127, 0, 0, 1], 0).into())
        .await
        .expect("echo");
    let inbound = free_addr();
    let server = Idgate::spawn(
        &spire,
        "server",
        4301,
        &format!("[[inbound]]\nname = \"api\"\nlisten = \"{inbound}\"\nupstream = \"http://{echo}\"\npolicy = \"policy.toml\"\n"),
        &[("policy.toml", POLICY)],
    );
    let (http_out, tcp_out) = (free_addr(), free_addr());
    let client = Idgate::spawn(
        &spire,
        "client",
        4302,
        &format!(
            "[[outbound]]\nname = \"pooled\"\nlisten = \"{http_out}\"\ntarget = \"{inbound}\"\nserver_ids = [\"{SERVER_ID}\"]\n\n\
             [[outbound]]\nname = \"fresh\"\nlisten = \"{tcp_out}\"\ntarget = \"{inbound}\"\nserver_ids = [\"{SERVER_ID}\"]\nprotocol = \"tcp\"\n"
        ),
        &[],
    );
    server.ready().await;
    client.ready().await;

    // Requests through a pooled connection, the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, sent) = (stop.clone(), sent.clone());
        tokio::spawn(async move {
            let http = support::plain_client();
            let url = format!("http://{http_out}/pooled");
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let reply = support::send(&http, "GET", &url, &[], Bytes::new()).await;
                sent.fetch_add(1, Ordering::Relaxed);
                if reply.status != StatusCode::OK {
                    failures.push(format!("{}: {}", reply.status, reply.text()));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            failures
        })
    };

    tokio::task::block_in_place(|| spire.kill_agent());
    client.logged("stream lost", Duration::from_secs(10)).await;
    assert_eq!(client.metric("idgate_workload_api_connected").await, 0.0);
    let serial_during_outage = client.serial().await;

    // The agent is gone for a while: new handshakes still use the SVID we have.
    let outage = Instant::now();
    let mut fresh = 0;
    while outage.elapsed() < Duration::from_secs(5) {
        let reply = h2_once(tcp_out, "/fresh").await;
        assert!(
            matches!(reply, Ok((StatusCode::OK, Some(_)))),
            "during the outage: {reply:?}"
        );
        fresh += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = client.admin_get("/readyz").await.expect("admin");
    assert_eq!(
        status,
        StatusCode::OK,
        "still ready while the SVID is valid: {body}"
    );
    let log = client.log();
    assert_eq!(lines_with(&log, "stream lost"), 1, "{log}");
    assert_eq!(
        lines_with(&log, "waiting for the SPIRE agent"),
        1,
        "one line, not one per retry:\n{log}"
    );

    tokio::task::block_in_place(|| spire.start_agent());
    eventually("client reconnects", Duration::from_secs(15), || async {
        (client.metric("idgate_workload_api_connected").await == 1.0).then_some(())
    })
    .await;
    eventually(
        "a new SVID after the restart",
        Duration::from_secs(30),
        || async { (client.serial().await != serial_during_outage).then_some(()) },
    )
    .await;
    let reply = h2_once(tcp_out, "/fresh").await;
    assert!(
        matches!(reply, Ok((StatusCode::OK, Some(_)))),
        "after the restart: {reply:?}"
    );
    assert_eq!(
        lines_with(&client.log(), "Workload API: connected"),
        2,
        "{}",
        client.log()
    );

    stop.store(true, Ordering::Relaxed);
    let failures = load.await.expect("load");
    let sent = sent.load(Ordering::Relaxed);
    eprintln!("{sent} pooled requests, {fresh} fresh connections during the outage");
    assert!(failures.is_empty(), "pooled requests failed: {failures:?}");
    assert!(sent > 50, "the load ran ({sent} requests)");
}
