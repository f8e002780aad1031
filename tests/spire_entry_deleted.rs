//! The workload's registration entry is deleted: the agent stops issuing its identity,
//! idgate logs it, keeps serving with the SVID it has, and turns not ready (503) when that
//! SVID reaches its expiry margin.

mod spire;
mod support;

use std::time::Duration;

use http::StatusCode;
use spire::{eventually, free_addr, inbound_toml, lines_with, Idgate, Spire};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const ID: &str = "spiffe://example.org/ns/billing/sa/api";
const TTL: u32 = 20;
const POLICY: &str = "mode = \"enforce\"\ndefault = \"deny\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_entry_turns_not_ready_at_expiry() {
    let (spire, entry) = tokio::task::block_in_place(|| {
        let spire = Spire::start(TTL);
        let entry = spire.register(ID, 4401, TTL);
        (spire, entry)
    });
    let workload = Idgate::spawn(
        &spire,
        "api",
        4401,
        &inbound_toml(free_addr(), "127.0.0.1:9"),
        &[("policy.toml", POLICY)],
    );
    workload.ready().await;
    // Before the deletion, only the start-up may have seen "no identity issued".
    let before = lines_with(&workload.log(), "no identity issued");

    tokio::task::block_in_place(|| spire.delete_entry(&entry));
    eventually(
        "idgate logs that the identity is gone",
        Duration::from_secs(30),
        || async { (lines_with(&workload.log(), "no identity issued") > before).then_some(()) },
    )
    .await;
    let identity = workload.identity().await;
    let not_after =
        OffsetDateTime::parse(identity["not_after"].as_str().expect("not_after"), &Rfc3339)
            .expect("RFC 3339");
    if OffsetDateTime::now_utc() < not_after - Duration::from_secs(3) {
        let (status, body) = workload.admin_get("/readyz").await.expect("admin");
        assert_eq!(
            status,
            StatusCode::OK,
            "still ready with a valid SVID: {body}"
        );
    }

    let body = eventually("/readyz 503 at expiry", Duration::from_secs(45), || async {
        match workload.admin_get("/readyz").await {
            Some((StatusCode::SERVICE_UNAVAILABLE, body)) => Some(body),
            _ => None,
        }
    })
    .await;
    let now = OffsetDateTime::now_utc();
    assert!(
        now >= not_after - Duration::from_secs(2),
        "not ready at {now}, well before the SVID's expiry {not_after}: {body}"
    );
    assert!(body.contains(&format!("SVID {ID}")), "{body}");
    assert!(body.contains("no replacement has arrived"), "{body}");
    assert_eq!(
        workload.identity().await["serial"],
        identity["serial"],
        "no new SVID"
    );
    workload
        .logged("identity not fit to serve", Duration::from_secs(5))
        .await;
}
