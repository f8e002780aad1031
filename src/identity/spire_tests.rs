//! Turning Workload API X.509 contexts into material: SVID choice, own and federated bundles.

use std::sync::Arc;

use spiffe::{TrustDomain, X509Bundle, X509BundleSet, X509Svid};

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

/// The SVID and bundles of an update that must carry both.
fn full(update: Result<Update, UpdateError>) -> (Svid, TrustBundles) {
    match update.expect("material") {
        Update::Full(svid, bundles) => (svid, bundles),
        other => panic!("expected an SVID: {other:?}"),
    }
}

/// A source that is never run: contexts are handed to `apply` directly.
fn source(spiffe_id: Option<&str>) -> (SpireSource, IdentityHandle, IdentityHealth) {
    let identity = IdentityHandle::new("spire test");
    let health = IdentityHealth::new(super::super::health::HealthSettings::files());
    let wanted = spiffe_id.map(|id| SpiffeId::parse(id).expect("ID"));
    let source = SpireSource::new(
        "unix:///nonexistent/agent.sock",
        wanted,
        identity.clone(),
        health.clone(),
    )
    .expect("source");
    (source, identity, health)
}

#[test]
fn default_svid_with_own_and_federated_bundles() {
    let w = World::new();
    let context = w.context(
        &["spiffe://example.org/a", "spiffe://example.org/b"],
        &[("example.org", &w.ours), ("partner.org", &w.partner)],
    );
    let (svid, bundles) = full(material(&context, None));
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
    let (svid, _) = full(material(&context, Some(&wanted)));
    assert_eq!(svid.spiffe_id, wanted);

    let missing = SpiffeId::parse("spiffe://example.org/c").expect("ID");
    match material(&context, Some(&missing)).expect("bundles still usable") {
        Update::NotIssued {
            bundles,
            wanted,
            offered,
        } => {
            assert_eq!(wanted, "spiffe://example.org/c");
            assert_eq!(
                offered,
                ["spiffe://example.org/a", "spiffe://example.org/b"]
            );
            assert_eq!(bundles.trust_domains(), ["example.org"]);
        }
        other => panic!("expected NotIssued: {other:?}"),
    }
}

#[test]
fn missing_configured_id_with_a_bad_own_bundle_is_refused() {
    let w = World::new();
    let context = w.context(&["spiffe://example.org/a"], &[("partner.org", &w.partner)]);
    let wanted = SpiffeId::parse("spiffe://example.org/c").expect("ID");
    let error = material(&context, Some(&wanted)).expect_err("no own bundle");
    assert!(
        error
            .to_string()
            .contains("no bundle for our trust domain example.org"),
        "{error}"
    );
}

#[test]
fn withdrawn_id_keeps_the_svid_applies_bundles_and_is_not_ready() {
    let w = World::new();
    let (a, b) = ("spiffe://example.org/a", "spiffe://example.org/b");
    let both = [("example.org", &w.ours), ("partner.org", &w.partner)];
    let (mut source, identity, health) = source(Some(a));
    source.apply(w.context(&[a, b], &both));
    let first = identity.current().expect("published");
    assert_eq!(
        first.bundles.trust_domains(),
        ["example.org", "partner.org"]
    );
    assert!(health.reasons(&identity).is_empty());

    // `a` withdrawn, partner.org dropped in the same update: trust shrinks at once.
    source.apply(w.context(&[b], &[("example.org", &w.ours)]));
    let now = identity.current().expect("still published");
    assert_eq!(
        now.svid.serial, first.svid.serial,
        "the SVID in hand is kept"
    );
    assert_eq!(now.svid.spiffe_id.as_str(), a);
    assert_eq!(now.bundles.trust_domains(), ["example.org"]);
    let reasons = health.reasons(&identity);
    assert!(
        reasons.len() == 1
            && reasons[0].contains(&format!("does not issue the configured spiffe_id {a}"))
            && reasons[0].contains(b),
        "{reasons:?}"
    );
    assert_eq!(
        source.state,
        State::NotIssued {
            wanted: a.into(),
            offered: vec![b.into()]
        }
    );

    // Later bundle changes are applied too; an unchanged bundle set publishes nothing.
    source.apply(w.context(&[b], &both));
    let grown = identity.current().expect("published");
    assert_eq!(
        grown.bundles.trust_domains(),
        ["example.org", "partner.org"]
    );
    source.apply(w.context(&[b], &both));
    assert_eq!(
        identity.current().expect("published").generation,
        grown.generation
    );
    assert!(matches!(source.state, State::NotIssued { .. }));

    // `a` issued again: a new SVID, ready again.
    source.apply(w.context(&[a, b], &both));
    let back = identity.current().expect("published");
    assert_ne!(back.svid.serial, first.svid.serial);
    assert!(health.reasons(&identity).is_empty());
    assert_eq!(source.state, State::Connected);
}

#[test]
fn configured_id_never_issued_is_a_reason_before_any_svid() {
    let w = World::new();
    let (mut source, identity, health) = source(Some("spiffe://example.org/a"));
    source.apply(w.context(&["spiffe://example.org/b"], &[("example.org", &w.ours)]));
    assert!(
        identity.current().is_none(),
        "nothing to publish without our SVID"
    );
    let reasons = health.reasons(&identity);
    assert!(
        reasons.len() == 1 && reasons[0].contains("spiffe_id spiffe://example.org/a"),
        "{reasons:?}"
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
    let (_, bundles) = full(material(&context, None));
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
