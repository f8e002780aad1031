//! The configured `spiffe_id` is withdrawn while the agent still issues the workload another
//! SVID (one of its two registration entries is deleted). idgate turns not ready with the
//! reason, logs the change once, keeps the SVID it has, and still applies the bundle updates
//! that follow: a federated trust domain dropped afterwards stops being trusted.

mod spire;
mod support;

use std::time::Duration;

use http::StatusCode;
use spire::{eventually, free_addr, inbound_toml, lines_with, Idgate, Spire};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The ID idgate is configured for; its entry is deleted.
const WANTED: &str = "spiffe://example.org/ns/billing/sa/api";
/// The workload's other ID; its entry stays, so the agent keeps streaming.
const OTHER: &str = "spiffe://example.org/ns/billing/sa/batch";
const PARTNER_TD: &str = "partner.org";
const UID: u32 = 4601;
/// Long enough that the expiry margin never plays a part here.
const TTL: u32 = 300;
const POLICY: &str = "mode = \"enforce\"\ndefault = \"deny\"\n";
/// What idgate logs when the configured ID disappears from the agent's updates.
const WITHDRAWN_LOG: &str = "the configured spiffe_id is not among the SVIDs";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawn_spiffe_id_turns_not_ready_and_bundle_updates_still_apply() {
    let partner = idgate::devpki::DevCa::new(PARTNER_TD).expect("partner CA");
    let (spire, wanted_entry) = tokio::task::block_in_place(|| {
        let spire = Spire::start(TTL);
        spire.set_federated_bundle(PARTNER_TD, &partner.root_pem());
        let federates = ["-federatesWith", "spiffe://partner.org"];
        let wanted = spire.register_with(WANTED, UID, TTL, &federates);
        spire.register_with(OTHER, UID, TTL, &federates);
        (spire, wanted)
    });
    // `Idgate::spawn` writes the listeners right after `[identity]`'s keys, so a leading
    // key line still belongs to `[identity]`.
    let listeners = format!(
        "spiffe_id = \"{WANTED}\"\n\n{}",
        inbound_toml(free_addr(), "127.0.0.1:9")
    );
    let workload = Idgate::spawn(&spire, "api", UID, &listeners, &[("policy.toml", POLICY)]);
    workload.ready().await;
    let before = eventually(
        "partner.org's bundle delivered",
        Duration::from_secs(30),
        || async {
            let identity = workload.identity().await;
            let both = identity["trust_domains"] == serde_json::json!(["example.org", PARTNER_TD]);
            both.then_some(identity)
        },
    )
    .await;
    assert_eq!(before["spiffe_id"], WANTED, "{before}");

    // (a) The entry of the configured ID goes; the other one stays.
    tokio::task::block_in_place(|| spire.delete_entry(&wanted_entry));
    let body = eventually(
        "/readyz 503 naming the withdrawn spiffe_id",
        Duration::from_secs(30),
        || async {
            match workload.admin_get("/readyz").await {
                Some((StatusCode::SERVICE_UNAVAILABLE, body)) => Some(body),
                _ => None,
            }
        },
    )
    .await;
    assert!(
        body.contains(&format!(
            "the agent does not issue the configured spiffe_id {WANTED}"
        )),
        "{body}"
    );
    assert!(
        body.contains(OTHER),
        "the body names what the agent offers: {body}"
    );
    assert!(!body.contains("expire"), "not the expiry rule: {body}");
    // The SVID in hand is kept (still valid, still ours), not swapped for the other ID.
    let identity = workload.identity().await;
    assert_eq!(identity["spiffe_id"], WANTED, "{identity}");
    assert_eq!(identity["serial"], before["serial"], "{identity}");
    let not_after =
        OffsetDateTime::parse(identity["not_after"].as_str().expect("not_after"), &Rfc3339)
            .expect("RFC 3339");
    assert!(
        OffsetDateTime::now_utc() + Duration::from_secs(60) < not_after,
        "the SVID is far from expiry: {identity}"
    );
    let line = workload
        .log()
        .lines()
        .find(|l| l.contains(WITHDRAWN_LOG))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{WITHDRAWN_LOG:?} logged:\n{}", workload.log()));
    assert!(
        line.contains(OTHER),
        "the log line names the offered IDs: {line}"
    );

    // (b) A bundle change after the withdrawal is applied: partner.org stops being trusted.
    tokio::task::block_in_place(|| spire.delete_federated_bundle(PARTNER_TD, "dissociate"));
    eventually(
        "partner.org gone from the trust domains in use",
        Duration::from_secs(30),
        || async {
            let identity = workload.identity().await;
            (identity["trust_domains"] == serde_json::json!(["example.org"])).then_some(())
        },
    )
    .await;
    let (status, body) = workload.admin_get("/readyz").await.expect("admin answers");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(workload.identity().await["serial"], before["serial"]);
    // Several updates came after the withdrawal; its log line came once.
    assert_eq!(
        lines_with(&workload.log(), WITHDRAWN_LOG),
        1,
        "{}",
        workload.log()
    );
}
