//! Turning Workload API X.509 contexts into material: SVID choice, own and federated bundles.

use std::sync::Arc;

use spiffe::{TrustDomain, X509Bundle, X509BundleSet};

use super::*;
use crate::devpki::DevCa;

fn svid(ca: &DevCa, id: &str) -> Arc<X509Svid> {
    let issued = ca
        .issue_svid(&SpiffeId::parse(id).expect("ID"))
        .expect("issue");
    let chain: Vec<u8> = issued.chain_der.iter().flat_map(|c| c.to_vec()).collect();
    Arc::new(X509Svid::parse_from_der(&chain, issued.key_der.secret_der()).expect("SVID"))
}

fn bundle(ca: &DevCa, td: &str) -> X509Bundle {
    X509Bundle::parse_from_der(TrustDomain::new(td).expect("TD"), ca.root_der()).expect("bundle")
}

struct World {
    ours: DevCa,
    partner: DevCa,
}

impl World {
    fn new() -> Self {
        Self {
            ours: DevCa::new("example.org").expect("CA"),
            partner: DevCa::new("partner.org").expect("CA"),
        }
    }

    fn context(&self, ids: &[&str], bundles: &[(&str, &DevCa)]) -> X509Context {
        let svids = ids.iter().map(|id| svid(&self.ours, id));
        let set: X509BundleSet = bundles.iter().map(|(td, ca)| bundle(ca, td)).collect();
        X509Context::new(svids, set)
    }
}

#[test]
fn default_svid_with_own_and_federated_bundles() {
    let w = World::new();
    let context = w.context(
        &["spiffe://example.org/a", "spiffe://example.org/b"],
        &[("example.org", &w.ours), ("partner.org", &w.partner)],
    );
    let (svid, bundles) = material(&context, None).expect("material");
    assert_eq!(svid.spiffe_id.as_str(), "spiffe://example.org/a");
    assert_eq!(bundles.trust_domains(), ["example.org", "partner.org"]);
    let partner_anchor = webpki::anchor_from_trusted_cert(w.partner.root_der()).expect("anchor");
    assert_eq!(
        bundles.get("partner.org").expect("partner bundle")[0].subject,
        partner_anchor.subject
    );
}

#[test]
fn configured_spiffe_id_is_picked() {
    let w = World::new();
    let context = w.context(
        &["spiffe://example.org/a", "spiffe://example.org/b"],
        &[("example.org", &w.ours)],
    );
    let wanted = SpiffeId::parse("spiffe://example.org/b").expect("ID");
    let (svid, _) = material(&context, Some(&wanted)).expect("material");
    assert_eq!(svid.spiffe_id, wanted);

    let missing = SpiffeId::parse("spiffe://example.org/c").expect("ID");
    let error = material(&context, Some(&missing)).expect_err("not offered");
    assert!(
        error
            .to_string()
            .contains("not the configured spiffe_id spiffe://example.org/c"),
        "{error}"
    );
}

#[test]
fn missing_own_bundle_is_refused() {
    let w = World::new();
    let context = w.context(&["spiffe://example.org/a"], &[("partner.org", &w.partner)]);
    let error = material(&context, None).expect_err("no own bundle");
    assert!(
        error
            .to_string()
            .contains("no bundle for our trust domain example.org"),
        "{error}"
    );
}

#[test]
fn empty_federated_bundle_is_left_out() {
    let w = World::new();
    let mut set: X509BundleSet = [bundle(&w.ours, "example.org")].into_iter().collect();
    set.add_bundle(X509Bundle::new(TrustDomain::new("empty.org").expect("TD")));
    let context = X509Context::new([svid(&w.ours, "spiffe://example.org/a")], set);
    let (_, bundles) = material(&context, None).expect("material");
    assert_eq!(bundles.trust_domains(), ["example.org"]);
}

#[tokio::test]
async fn agent_not_running_is_retried_and_nothing_is_published() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = format!("unix://{}/agent.sock", dir.path().display());
    let identity = IdentityHandle::new("spire test");
    let health = IdentityHealth::new(super::super::health::HealthSettings::files());
    let source = SpireSource::new(&socket, None, identity.clone(), health).expect("source");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(source.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(identity.current().is_none());
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("stops on shutdown")
        .expect("no panic");
}

#[test]
fn bad_socket_is_refused() {
    let identity = IdentityHandle::new("spire test");
    let health = IdentityHealth::new(super::super::health::HealthSettings::files());
    assert!(SpireSource::new("/no/scheme.sock", None, identity, health).is_err());
}
