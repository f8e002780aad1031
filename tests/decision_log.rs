//! A decision log that cannot be written (here `/dev/full`, a disk that is always full)
//! never stops requests, and is not silent: the failure is logged once and counted.
#![cfg(target_os = "linux")]

mod support;

use std::time::Duration;

use support::process::RunningIdgate;
use support::*;

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
