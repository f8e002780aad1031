//! The SPIRE agent goes away mid-run: idgate keeps serving with the SVID it has (pooled and
//! new connections alike), logs the outage once, and when the agent is back it reconnects
//! and picks up the next rotation.

mod spire;
mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use spire::{eventually, h2_once, lines_with, PooledLoad, TwoSidecars, ALLOW_CLIENT};

const TTL: u32 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_keeps_serving_and_reconnects() {
    let mut mesh = TwoSidecars::start(TTL, 4301, 4302, ALLOW_CLIENT).await;
    let (client, tcp_out) = (&mesh.client, mesh.tcp_out);

    // Requests through a pooled connection, the whole time.
    let load = PooledLoad::start(
        vec![format!("http://{}/pooled", mesh.http_out)],
        Some(Duration::from_millis(10)),
    );

    tokio::task::block_in_place(|| mesh.spire.kill_agent());
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

    tokio::task::block_in_place(|| mesh.spire.start_agent());
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

    let (failures, sent) = load.stop().await;
    eprintln!("{sent} pooled requests, {fresh} fresh connections during the outage");
    assert!(failures.is_empty(), "pooled requests failed: {failures:?}");
    assert!(sent > 50, "the load ran ({sent} requests)");
}
