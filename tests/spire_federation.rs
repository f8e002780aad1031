//! Federation with a real SPIRE (issue 3, item 5), without a second SPIRE: a dev CA for
//! `partner.org` is loaded into the SPIRE server as a federated bundle and the server
//! workload's entry federates with it, so the agent delivers partner.org's bundle to the
//! server sidecar. Partner clients are idgate sidecars with `files` identity (SVIDs from the
//! dev CA, example.org's bundle from `spire-server bundle show` under
//! `[identity.federation]`) and a TCP outbound listener: one new mTLS handshake per app
//! connection, so every request shows the bundles the server holds right now.

mod spire;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;
use spire::{eventually, h2_once, spawn_server, xfcc_field, Idgate, Spire, SERVER_ID};
use support::{Pki, Sidecar};

const PARTNER_TD: &str = "partner.org";
const PARTNER_ID: &str = "spiffe://partner.org/ns/ext/sa/client";
const OTHER_ID: &str = "spiffe://other.org/ns/ext/sa/client";
const UNKNOWN_TD_FAILURES: &str =
    "idgate_tls_handshake_failures_total{listener=\"api\",reason=\"unknown_trust_domain\"}";

const POLICY: &str = r#"
mode = "enforce"
default = "deny"

[[rule]]
name = "partner-client"
action = "allow"
from = ["spiffe://partner.org/ns/ext/sa/client"]

[[rule]]
name = "other-client"
action = "allow"
from = ["spiffe://other.org/ns/ext/sa/client"]
"#;

/// SPIRE holding partner.org's bundle, the echo app and a ready server sidecar (SPIRE
/// identity, entry federating with partner.org) in front of it, judged by [`POLICY`]
/// (which also allows other.org, so only the handshake can refuse it).
///
/// Fields drop in order: the sidecar before SPIRE.
struct Federated {
    server: Idgate,
    spire: Spire,
    partner: Pki,
    inbound: SocketAddr,
}

impl Federated {
    async fn start(server_uid: u32) -> Self {
        let partner = Pki::new(PARTNER_TD);
        let spire = tokio::task::block_in_place(|| {
            let spire = Spire::start(60);
            spire.set_federated_bundle(PARTNER_TD, &partner.ca.root_pem());
            spire.register_with(
                SERVER_ID,
                server_uid,
                60,
                &["-federatesWith", "spiffe://partner.org"],
            );
            spire
        });
        let (server, inbound) = spawn_server(&spire, server_uid, POLICY).await;
        server.ready().await;
        Self {
            server,
            spire,
            partner,
            inbound,
        }
    }

    /// An in-process client sidecar with `files` identity `id` from `pki`, trusting
    /// example.org through `[identity.federation]` with the bundle SPIRE shows, and a TCP
    /// outbound listener to the server sidecar.
    async fn client(&self, pki: &Pki, name: &str, id: &str) -> Sidecar {
        let example = pki.path("example.org-bundle.pem");
        let pem = tokio::task::block_in_place(|| self.spire.bundle_pem());
        std::fs::write(&example, pem).expect("write example.org bundle");
        let toml = format!(
            "{}[identity.federation]\n\"example.org\" = {example:?}\n\n\
             [[outbound]]\nname = \"to-api\"\nlisten = \"127.0.0.1:0\"\ntarget = \"{}\"\n\
             server_ids = [\"{SERVER_ID}\"]\nprotocol = \"tcp\"\n",
            pki.identity_toml(name, id),
            self.inbound
        );
        Sidecar::start(pki.dir.path(), name, &toml).await
    }

    /// A request from `client` (of `trust_domain`) is refused in the handshake, counted
    /// once under `unknown_trust_domain` and logged with the trust domain it lacks.
    async fn assert_refused_unknown_td(&self, client: &Sidecar, trust_domain: &str) {
        let refused = h2_once(client.outbound(), "/api/orders").await;
        assert!(refused.is_err(), "{trust_domain} got through: {refused:?}");
        eventually(
            "unknown_trust_domain counted on the server",
            Duration::from_secs(10),
            || async { (self.unknown_td_failures().await == 1.0).then_some(()) },
        )
        .await;
        let logged = format!("trust domain {trust_domain} has no bundle");
        self.server.logged(&logged, Duration::from_secs(10)).await;
    }

    /// The server's count of handshakes refused for an unknown trust domain.
    async fn unknown_td_failures(&self) -> f64 {
        let (status, body) = self
            .server
            .admin_get("/metrics")
            .await
            .expect("admin answers");
        assert_eq!(status, StatusCode::OK);
        support::metric(&body, UNKNOWN_TD_FAILURES)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_peer_is_verified_with_the_agents_bundle_and_unknown_domain_refused() {
    let fed = Federated::start(4501).await;

    // The agent delivered partner.org's bundle beside our own.
    let identity = fed.server.identity().await;
    assert_eq!(identity["spiffe_id"], SERVER_ID);
    assert_eq!(
        identity["trust_domains"],
        serde_json::json!(["example.org", "partner.org"]),
        "{identity}"
    );

    // A partner.org SVID from the dev CA is verified against that bundle and admitted.
    let partner = fed.client(&fed.partner, "partner", PARTNER_ID).await;
    let (status, xfcc) = h2_once(partner.outbound(), "/api/orders")
        .await
        .expect("partner request through outbound -> inbound");
    assert_eq!(status, StatusCode::OK);
    let xfcc = xfcc.expect("XFCC reached the upstream");
    assert_eq!(xfcc_field(&xfcc, "URI"), Some(PARTNER_ID), "{xfcc}");
    assert_eq!(xfcc_field(&xfcc, "By"), Some(SERVER_ID), "{xfcc}");
    assert_eq!(fed.unknown_td_failures().await, 0.0);

    // other.org's CA was never given to SPIRE: refused in the handshake, with the reason.
    let other_pki = Pki::new("other.org");
    let other = fed.client(&other_pki, "other", OTHER_ID).await;
    fed.assert_refused_unknown_td(&other, "other.org").await;

    // The refusal changed nothing for the partner.
    let (status, _) = h2_once(partner.outbound(), "/api/orders")
        .await
        .expect("partner request after the refusal");
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_federated_bundle_refuses_the_partner_without_a_restart() {
    let fed = Federated::start(4502).await;
    let partner = fed.client(&fed.partner, "partner", PARTNER_ID).await;
    let (status, _) = h2_once(partner.outbound(), "/api/orders")
        .await
        .expect("partner request before the bundle is deleted");
    assert_eq!(status, StatusCode::OK);

    // `dissociate` also drops partner.org from the server's entry: the agent stops sending it.
    tokio::task::block_in_place(|| fed.spire.delete_federated_bundle(PARTNER_TD, "dissociate"));
    let deleted = Instant::now();
    eventually(
        "partner.org gone from the server's trust domains",
        Duration::from_secs(20),
        || async {
            let identity = fed.server.identity().await;
            (identity["trust_domains"] == serde_json::json!(["example.org"])).then_some(())
        },
    )
    .await;
    eprintln!(
        "partner.org bundle gone from idgate {:?} after the delete",
        deleted.elapsed()
    );

    fed.assert_refused_unknown_td(&partner, "partner.org").await;
}
