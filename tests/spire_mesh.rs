//! Two idgate sidecars with SVIDs from a real SPIRE: allow, deny, XFCC; and what a sidecar
//! does before its first SVID (listeners bound, handshakes refused, `/readyz` says why).

mod spire;
mod support;

use std::time::Duration;

use http::StatusCode;
use spire::{
    eventually, free_addr, http1_once, inbound_toml, lines_with, xfcc_field, Idgate, Spire,
    TwoSidecars, CLIENT_ID, SERVER_ID,
};

const POLICY: &str = r#"
mode = "enforce"
default = "deny"

[[rule]]
name = "frontend-reads-api"
action = "allow"
from = ["spiffe://example.org/ns/shop/sa/frontend"]
methods = ["GET"]
paths = ["/api/*"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spire_issued_svids_allow_deny_and_xfcc() {
    let mesh = TwoSidecars::start(60, 4101, 4102, POLICY).await;
    let (server, client, outbound) = (&mesh.server, &mesh.client, mesh.http_out);

    let identity = server.identity().await;
    assert_eq!(identity["spiffe_id"], SERVER_ID);
    assert_eq!(
        identity["trust_domains"],
        serde_json::json!(["example.org"])
    );
    assert_eq!(client.identity().await["spiffe_id"], CLIENT_ID);
    assert_eq!(client.metric("idgate_workload_api_connected").await, 1.0);

    let allowed = support::get(&format!("http://{outbound}/api/orders"), &[]).await;
    assert_eq!(allowed.status, StatusCode::OK, "{}", allowed.text());
    let xfcc = spire::echoed_xfcc(&allowed.headers).expect("XFCC reached the upstream");
    assert_eq!(xfcc_field(&xfcc, "URI"), Some(CLIENT_ID), "{xfcc}");
    assert_eq!(xfcc_field(&xfcc, "By"), Some(SERVER_ID), "{xfcc}");
    let hash = xfcc_field(&xfcc, "Hash").expect("Hash");
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{xfcc}"
    );

    let denied = support::get(&format!("http://{outbound}/admin/users"), &[]).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.text().trim_end(), "access denied");
    assert!(denied.headers.contains_key("x-request-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_the_first_svid_listeners_refuse_and_readyz_says_why() {
    let spire = tokio::task::block_in_place(|| Spire::start(60));
    let inbound = free_addr();
    let workload = Idgate::spawn(
        &spire,
        "late",
        4103,
        &inbound_toml(inbound, "127.0.0.1:9"),
        &[("policy.toml", POLICY)],
    );
    // No entry for uid 4103 yet: the agent says "no identity issued" and idgate retries.
    let (status, body) = eventually("admin endpoint", Duration::from_secs(30), || {
        workload.admin_get("/readyz")
    })
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body.contains(&format!("waiting for SVID from {}", spire.socket())),
        "{body}"
    );
    workload
        .logged("no identity issued", Duration::from_secs(30))
        .await;
    let (status, _) = workload
        .admin_get("/identity")
        .await
        .expect("admin answers");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    // The listener is bound and refuses the handshake cleanly (no certificate to offer).
    let ca = idgate::devpki::DevCa::new("example.org").expect("CA");
    let tls = support::tls_client(&ca.root_pem(), None, &[b"http/1.1"]);
    let refused = support::mtls_send(inbound, tls, "GET", "/", &[]).await;
    assert!(
        matches!(&refused, Err(e) if e.starts_with("handshake")),
        "{refused:?}"
    );

    // Retries are not logged one by one: one line per state change.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = workload.log();
    assert_eq!(lines_with(&log, "no identity issued"), 1, "{log}");

    // Once the entry exists the SVID arrives without a restart.
    tokio::task::block_in_place(|| spire.register("spiffe://example.org/ns/late/sa/api", 4103, 60));
    workload.ready().await;
    assert_eq!(
        workload.identity().await["spiffe_id"],
        "spiffe://example.org/ns/late/sa/api"
    );
    assert!(
        http1_once(inbound, "/").await.is_err(),
        "plain HTTP on the mTLS port is refused"
    );
}
