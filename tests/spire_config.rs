//! `[identity] source = "spire"` config: socket forms, health keys and their defaults, and
//! the keys refused for the other source (no SPIRE needed).

use std::time::Duration;

use idgate::config::{Config, IdentityConfig, SourceFile};

const OUTBOUND: &str = "[[outbound]]\nname = \"o\"\nlisten = \"127.0.0.1:0\"\ntarget = \"peer:8443\"\nserver_ids = [\"spiffe://example.org/x\"]\n";

fn load(identity: &str) -> Result<Config, String> {
    Config::from_source(&SourceFile {
        path: "test.toml".into(),
        text: format!("[identity]\n{identity}\n{OUTBOUND}"),
    })
    .map_err(|e| e.to_string())
}

fn spire(config: &Config) -> (&str, Duration, Duration) {
    match &config.identity {
        IdentityConfig::Spire {
            socket,
            expiry_margin,
            max_bundle_age,
            ..
        } => (socket.as_str(), *expiry_margin, *max_bundle_age),
        other => panic!("not spire: {other:?}"),
    }
}

#[test]
fn health_keys_and_defaults() {
    let config =
        load("source = \"spire\"\nsocket = \"unix:///run/spire/agent.sock\"").expect("valid");
    assert_eq!(
        spire(&config),
        (
            "unix:///run/spire/agent.sock",
            Duration::from_secs(30),
            Duration::from_secs(24 * 3600)
        )
    );
    let config = load(
        "source = \"spire\"\nsocket = \"tcp://127.0.0.1:8081\"\nexpiry_margin = \"5m\"\nmax_bundle_age = \"1h\"",
    )
    .expect("valid");
    assert_eq!(
        spire(&config),
        (
            "tcp://127.0.0.1:8081",
            Duration::from_secs(300),
            Duration::from_secs(3600)
        )
    );
}

#[test]
fn refusals_name_the_field() {
    let cases = [
        ("source = \"spire\"\nsocket = \"/run/agent.sock\"", "identity.socket"),
        ("source = \"spire\"\nsocket = \"unix:///a.sock\"\nexpiry_margin = \"30\"", "identity.expiry_margin"),
        ("source = \"spire\"\nsocket = \"unix:///a.sock\"\nmax_bundle_age = \"1d\"", "identity.max_bundle_age"),
        ("source = \"spire\"\nsocket = \"unix:///a.sock\"\nbundle_age = \"1h\"", "bundle_age"),
        (
            "source = \"files\"\ncert = \"a.pem\"\nkey = \"k.pem\"\nbundle = \"b.pem\"\nexpiry_margin = \"30s\"",
            "identity.expiry_margin: only for source = \"spire\"",
        ),
        (
            "source = \"files\"\ncert = \"a.pem\"\nkey = \"k.pem\"\nbundle = \"b.pem\"\nmax_bundle_age = \"1h\"",
            "identity.max_bundle_age: only for source = \"spire\"",
        ),
    ];
    for (identity, expected) in cases {
        let error = load(identity).expect_err(identity);
        assert!(error.contains(expected), "{identity:?}: {error}");
        assert!(error.starts_with("test.toml:"), "{error}");
    }
}
