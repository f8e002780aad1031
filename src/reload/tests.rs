//! The real [`Reloader`] on real files in a temp directory: what it takes, what it
//! refuses, and what it counts.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::SourceFile;

const TWO_RULES: &str = "[[rule]]\nname = \"a\"\naction = \"allow\"\npaths = [\"/a\"]\n\n[[rule]]\nname = \"b\"\naction = \"allow\"\npaths = [\"/b\"]\n";

/// Replaces a file the way editors do: write a temp file, rename it over the old one.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The version a policy text compiles to.
fn version_of(text: &str) -> String {
    let source = SourceFile {
        path: "p.toml".into(),
        text: text.into(),
    };
    Policy::from_source(&source).unwrap().version().to_owned()
}

/// A reloader of one policy file (`policy.toml` in a temp dir, holding `text`).
struct Fixture {
    dir: tempfile::TempDir,
    handle: PolicyHandle,
    registry: Registry,
}

impl Fixture {
    fn new(text: &str) -> (Self, Reloader) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, text).unwrap();
        let handle = PolicyHandle::new(Arc::new(Policy::load(&path).unwrap()));
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
    fixture.until_version(&version_of(&whole)).await;
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
    assert_eq!(fixture.version(), version_of("default = \"deny\"\n"));
    assert_eq!(fixture.reloads("ok"), 1);
}
