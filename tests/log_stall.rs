//! A stderr nobody reads (a stalled pipe, a blocking container log driver) never stops
//! the sidecar: diagnostics are dropped instead of blocking the thread that serves
//! requests, the admin endpoint and signals.

mod support;

use std::time::Duration;

use support::process::RunningIdgate;
use support::*;

/// Denied requests, each a diagnostic line and a decision line on stderr: far more than
/// a 64 KiB pipe holds.
const DENIED: usize = 2_000;
/// Rounds of [`DENIED`] more requests at most until dropped lines are counted (the
/// writer holds 1,024 lines).
const MORE_ROUNDS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stderr_stops_neither_requests_nor_the_admin_endpoint() {
    let pki = Pki::new(TD);
    let idgate = RunningIdgate::start_inbound_with_policy(&pki, "default = \"deny\"\n", "").await;
    idgate.stall_stderr();
    let client = tls_client(
        &pki.ca.root_pem(),
        Some(&pki.svid(FRONTEND_ID)),
        &[b"http/1.1"],
    );
    let (mut sender, _task) = h1_connection(idgate.address("inbound"), client).await;
    let all = async {
        for _ in 0..DENIED {
            sender.ready().await.expect("connection ready");
            let response = sender.send_request(empty_get("/")).await.expect("response");
            assert_eq!(response.status(), 403);
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("requests stalled behind a full stderr pipe");
    let healthz = format!("http://{}/healthz", idgate.admin());
    let reply = tokio::time::timeout(Duration::from_secs(5), get(&healthz, &[]))
        .await
        .expect("the admin endpoint stalled behind a full stderr pipe");
    assert_eq!(reply.status, 200);

    // The lines dropped meanwhile are counted: more denials until the writer's buffer
    // overflows and a scrape shows it (bounded).
    let metrics = format!("http://{}/metrics", idgate.admin());
    let mut dropped = 0.0;
    for _ in 0..MORE_ROUNDS {
        dropped = metric(
            &get(&metrics, &[]).await.text(),
            "idgate_log_lines_dropped_total",
        );
        if dropped > 0.0 {
            break;
        }
        for _ in 0..DENIED {
            sender.ready().await.expect("connection ready");
            let response = sender.send_request(empty_get("/")).await.expect("response");
            assert_eq!(response.status(), 403);
        }
    }
    assert!(dropped > 0.0, "no dropped diagnostic line counted");
}
