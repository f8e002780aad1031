//! The real [`Reloader`] on real files in a temp directory: what it takes, what it
//! refuses, and what it counts.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::*;

const TWO_RULES: &str = "[[rule]]\nname = \"a\"\naction = \"allow\"\npaths = [\"/a\"]\n\n[[rule]]\nname = \"b\"\naction = \"allow\"\npaths = [\"/b\"]\n";

/// Replaces a file the way editors do: write a temp file, rename it over the old one.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A reloader of one policy file (`policy.toml` in a temp dir, holding `text`).
struct Fixture {
    dir: tempfile::TempDir,
    handle: PolicyHandle,
    registry: Registry,
}

impl Fixture {
    fn new(text: &str) -> (Self, Reloader) {
        Self::new_then(text, |_| {})
    }

    /// [`Fixture::new`], running `meanwhile` on the file after the policy was loaded
    /// and before the reloader watches it.
    fn new_then(text: &str, meanwhile: impl FnOnce(&Path)) -> (Self, Reloader) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, text).unwrap();
        let handle = PolicyHandle::new(Arc::new(Policy::load(&path).unwrap()));
        meanwhile(&path);
        let mut registry = Registry::default();
        let metrics = ReloadMetrics::register(&mut registry);
        let slot = PolicySlot {
            listener: "api".into(),
            path,
            policy: handle.clone(),
            tcp_only: false,
        };
        let reloader = Reloader::new(vec![slot], None, metrics);
        let fixture = Self {
            dir,
            handle,
            registry,
        };
        (fixture, reloader)
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("policy.toml")
    }

    fn version(&self) -> String {
        self.handle.load().version().to_owned()
    }

    /// `idgate_policy_reloads_total{result}` as exported.
    fn reloads(&self, result: &str) -> u64 {
        counter(
            &self.registry,
            &format!("idgate_policy_reloads_total{{result=\"{result}\"}}"),
        )
    }

    /// Waits (up to 5 s) until `version` is in force.
    async fn until_version(&self, version: &str) {
        for _ in 0..100 {
            if self.version() == version {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("version {version} never came into force");
    }
}

/// A counter's value in the registry's text exposition (0 when the series is absent).
fn counter(registry: &Registry, series: &str) -> u64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// `render > policy.toml` from a slow renderer: the file is truncated (an event), then
/// written one rule every 50 ms. Every prefix is a valid policy, so only waiting for the
/// file to go quiet keeps the partial ones out: one reload, to the whole file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_being_written_is_reloaded_once_it_is_quiet() {
    let (fixture, reloader) = Fixture::new(TWO_RULES);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(reloader.run(shutdown.clone()));
    let rules: Vec<String> = ["c", "d", "e", "f", "g", "h"]
        .iter()
        .map(|name| {
            format!("[[rule]]\nname = \"{name}\"\naction = \"allow\"\npaths = [\"/{name}\"]\n\n")
        })
        .collect();
    let whole = rules.concat();
    let path = fixture.path();
    let writer = std::thread::spawn(move || {
        let mut file = std::fs::File::create(&path).unwrap();
        for rule in rules {
            std::thread::sleep(Duration::from_millis(50));
            file.write_all(rule.as_bytes()).unwrap();
            file.flush().unwrap();
        }
    });
    writer.join().unwrap();
    fixture.until_version(&Policy::version_of(&whole)).await;
    assert_eq!(fixture.reloads("error"), 0, "no partial file was judged");
    assert_eq!(fixture.reloads("ok"), 1, "only the whole file was loaded");
    shutdown.cancel();
    running.await.unwrap();
}

/// An empty policy file (or one of comments only) is refused and counted; the last good
/// policy stays; a later good write is taken.
#[tokio::test]
async fn an_empty_policy_file_is_refused() {
    let (fixture, mut reloader) = Fixture::new(TWO_RULES);
    let good = fixture.version();
    for (n, text) in ["", " \n\n", "# being rendered\n\n  # by a template\n"]
        .into_iter()
        .enumerate()
    {
        replace(&fixture.path(), text);
        reloader.reload();
        assert_eq!(fixture.version(), good, "{text:?} must not be applied");
        assert_eq!(fixture.reloads("error"), n as u64 + 1, "{text:?}");
    }
    assert_eq!(fixture.reloads("ok"), 0);
    let err = Policy::load(&fixture.path()).unwrap_err().to_string();
    let want = format!(
        "{}: file holds only comments: a policy must say at least its default",
        fixture.path().display()
    );
    assert!(err.starts_with(&want), "{err}");
    replace(&fixture.path(), "default = \"deny\"\n");
    reloader.reload();
    assert_eq!(
        fixture.version(),
        Policy::version_of("default = \"deny\"\n")
    );
    assert_eq!(fixture.reloads("ok"), 1);
}

const API: &str = "spiffe://example.org/ns/billing/sa/api";

/// A `files` identity in a temp dir: a dev CA's bundle and an SVID for [`API`], loaded
/// as `idgate run` loads it.
struct IdentityFixture {
    dir: tempfile::TempDir,
    ca: crate::devpki::DevCa,
    handle: IdentityHandle,
    /// What [`IdentityFixture::new`] loaded and published.
    loaded: Option<Fingerprint>,
    registry: Registry,
}

impl IdentityFixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::devpki::DevCa::new("example.org").unwrap();
        std::fs::write(dir.path().join("bundle.pem"), ca.root_pem()).unwrap();
        let mut fixture = Self {
            dir,
            ca,
            handle: IdentityHandle::new("files"),
            loaded: None,
            registry: Registry::default(),
        };
        fixture.write(fixture.spec());
        let d = fixture.dir.path();
        let (cert, key, bundle) = (
            d.join("api.pem"),
            d.join("api-key.pem"),
            d.join("bundle.pem"),
        );
        let loaded = Contents::read(&cert, &key, &bundle, &[]).load().unwrap();
        fixture.handle.publish(loaded.svid, loaded.bundles);
        fixture.loaded = Some(loaded.fingerprint);
        fixture
    }

    fn spec(&self) -> crate::devpki::LeafSpec {
        crate::devpki::LeafSpec::svid(&crate::spiffe_id::SpiffeId::parse(API).unwrap())
    }

    /// Issues `spec` and replaces the key and the chain with it.
    fn write(&self, spec: crate::devpki::LeafSpec) {
        let issued = self.ca.issue(&spec).unwrap();
        replace(&self.dir.path().join("api-key.pem"), &issued.key_pem);
        replace(&self.dir.path().join("api.pem"), &issued.chain_pem);
    }

    fn reloader(&mut self) -> Reloader {
        let d = self.dir.path();
        let files = IdentityFiles {
            in_force: self.loaded.expect("loaded by new"),
            handle: self.handle.clone(),
            cert: d.join("api.pem"),
            key: d.join("api-key.pem"),
            bundle: d.join("bundle.pem"),
            federation: Vec::new(),
        };
        Reloader::new(
            Vec::new(),
            Some(files),
            ReloadMetrics::register(&mut self.registry),
        )
    }

    fn serial(&self) -> String {
        self.handle.current().unwrap().svid.serial.clone()
    }

    fn reloads(&self, result: &str) -> u64 {
        counter(
            &self.registry,
            &format!("idgate_identity_reloads_total{{result=\"{result}\"}}"),
        )
    }
}

/// An expired SVID, or one not valid for another hour, never replaces a valid one; the
/// refusal is counted; a valid one is then taken.
#[tokio::test]
async fn an_expired_or_future_svid_does_not_replace_a_valid_one() {
    let mut fixture = IdentityFixture::new();
    let mut reloader = fixture.reloader();
    let serial = fixture.serial();
    let now = time::OffsetDateTime::now_utc();
    let mut expired = fixture.spec();
    expired.not_before = now - time::Duration::days(2);
    expired.not_after = now - time::Duration::days(1);
    let mut future = fixture.spec();
    future.not_before = now + time::Duration::hours(1);
    future.not_after = now + time::Duration::days(1);
    for (n, spec) in [expired, future].into_iter().enumerate() {
        fixture.write(spec);
        reloader.reload();
        assert_eq!(fixture.serial(), serial, "refused #{n}");
        assert_eq!(fixture.reloads("error"), n as u64 + 1);
    }
    let mut skewed = fixture.spec();
    skewed.not_before = now + time::Duration::seconds(30);
    fixture.write(skewed);
    reloader.reload();
    assert_ne!(fixture.serial(), serial, "30 s ahead is within the skew");
    assert_eq!(fixture.reloads("ok"), 1);
}

/// The files are rewritten after `idgate run` loaded them and before the reloader
/// watches them: no event will ever come, yet the new SVID is loaded at once.
#[tokio::test]
async fn an_svid_rotated_during_start_up_is_loaded() {
    let mut fixture = IdentityFixture::new();
    let serial = fixture.serial();
    fixture.write(fixture.spec());
    let reloader = fixture.reloader();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(reloader.run(shutdown.clone()));
    for _ in 0..100 {
        if fixture.serial() != serial {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(
        fixture.serial(),
        serial,
        "the rotated SVID was never loaded"
    );
    shutdown.cancel();
    running.await.unwrap();
}

/// SIGHUP's reload takes files that differ from the identity in force, even when they
/// changed before the reloader was made.
#[tokio::test]
async fn a_reload_compares_with_the_bytes_in_force() {
    let mut fixture = IdentityFixture::new();
    let serial = fixture.serial();
    fixture.write(fixture.spec());
    let mut reloader = fixture.reloader();
    reloader.reload();
    assert_ne!(fixture.serial(), serial);
}

/// A refused policy file is reported once: reloads another file's change or a SIGHUP
/// starts do not count it again while it is unchanged; an edit is judged again, and so
/// is the same bad edit made again after the file went back to the policy in force.
#[tokio::test]
async fn an_unchanged_refused_policy_is_reported_once() {
    let (fixture, mut reloader) = Fixture::new(TWO_RULES);
    let good = fixture.version();
    replace(&fixture.path(), "default = \"maybe\"\n");
    for _ in 0..3 {
        reloader.reload();
    }
    assert_eq!(fixture.reloads("error"), 1);
    replace(&fixture.path(), "default = \"perhaps\"\n");
    reloader.reload();
    reloader.reload();
    assert_eq!(fixture.reloads("error"), 2, "an edit is judged again");
    replace(&fixture.path(), TWO_RULES);
    reloader.reload();
    replace(&fixture.path(), "default = \"perhaps\"\n");
    reloader.reload();
    assert_eq!(fixture.reloads("error"), 3, "the same bad edit, made again");
    assert_eq!(fixture.version(), good);
    assert_eq!(fixture.reloads("ok"), 0);
}

/// Refused identity files are reported once while unchanged, unless what was refused
/// is an SVID not valid *yet*: the same files become acceptable with time.
#[tokio::test]
async fn an_unchanged_refused_identity_is_reported_once_unless_it_may_become_valid() {
    let mut fixture = IdentityFixture::new();
    let mut reloader = fixture.reloader();
    let now = time::OffsetDateTime::now_utc();
    let mut expired = fixture.spec();
    expired.not_before = now - time::Duration::days(2);
    expired.not_after = now - time::Duration::days(1);
    fixture.write(expired);
    for _ in 0..3 {
        reloader.reload();
    }
    assert_eq!(fixture.reloads("error"), 1);
    let mut future = fixture.spec();
    future.not_before = now + time::Duration::hours(1);
    future.not_after = now + time::Duration::days(1);
    fixture.write(future);
    reloader.reload();
    reloader.reload();
    assert_eq!(fixture.reloads("error"), 3, "judged again at each reload");
}

/// A policy file rewritten after `idgate run` loaded it and before the reloader watches
/// it: no event will ever come, yet the new policy is loaded at once.
#[tokio::test]
async fn a_policy_rewritten_during_start_up_is_loaded() {
    let rewritten = "default = \"deny\"\n";
    let (fixture, reloader) = Fixture::new_then(TWO_RULES, |path| replace(path, rewritten));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(reloader.run(shutdown.clone()));
    fixture.until_version(&Policy::version_of(rewritten)).await;
    shutdown.cancel();
    running.await.unwrap();
}

/// A request that loaded the policy before a reload records its hit on it afterwards:
/// the hit counts for the policy in force, and the replaced policy is freed once the
/// request lets go of it (without any scrape).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_policy_a_request_holds_counts_then_is_freed() {
    let (fixture, reloader) = Fixture::new(TWO_RULES);
    let held: Arc<Policy> = Arc::clone(&fixture.handle.load());
    let replaced = Arc::downgrade(&held);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(reloader.run(shutdown.clone()));
    let edited =
        format!("{TWO_RULES}\n[[rule]]\nname = \"c\"\naction = \"allow\"\npaths = [\"/c\"]\n");
    replace(&fixture.path(), &edited);
    fixture.until_version(&Policy::version_of(&edited)).await;
    let source = crate::spiffe_id::SpiffeId::parse("spiffe://example.org/a").unwrap();
    let headers = http::HeaderMap::new();
    let request = crate::policy::Request {
        source: &source,
        method: "GET",
        path: "/a",
        headers: &headers,
    };
    held.record(&held.evaluate(&request));
    let hits_of_a = || fixture.handle.load().stats_json("api")["rules"][0]["hits"]["allow"].clone();
    assert_eq!(hits_of_a(), 1, "a hit on the replaced policy counts");
    drop(held);
    for _ in 0..50 {
        if replaced.upgrade().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        replaced.upgrade().is_none(),
        "the replaced policy was never freed"
    );
    assert_eq!(hits_of_a(), 1, "and its hit was kept");
    shutdown.cancel();
    running.await.unwrap();
}
