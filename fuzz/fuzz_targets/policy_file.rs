//! Policy files, as any text: loading never panics, an error points at a line of the file,
//! and a loaded policy judges every probe consistently (the deciding rule exists, an
//! enforced decision is never an audit one, a source it says it no longer admits gets
//! nothing through, in the file's mode or enforced). Probes are made from the file's own quoted strings, so rules match.
#![no_main]

use std::time::SystemTime;

use idgate::config::SourceFile;
use idgate::policy::{normalize_path, Action, Policy, Request, Verdict};
use idgate::spiffe_id::SpiffeId;
use libfuzzer_sys::fuzz_target;

const SOURCES: [&str; 2] = [
    "spiffe://example.org/ns/frontend/sa/web",
    "spiffe://other.org/x",
];
const METHODS: [&str; 2] = ["GET", "POST"];
const PATHS: [&str; 2] = ["/", "/api/v1/items"];

fuzz_target!(|text: &str| {
    let source = SourceFile {
        path: "fuzz/policy.toml".into(),
        text: text.to_owned(),
    };
    let policy = match Policy::from_source(&source) {
        Ok(policy) => policy,
        Err(e) => {
            assert!(!e.message.is_empty());
            if let Some(line) = e.line {
                assert!(
                    (1..=text.lines().count() + 1).contains(&line),
                    "line {line}: {e}"
                );
            }
            return;
        }
    };
    let quoted: Vec<&str> = text.split('"').skip(1).step_by(2).collect();
    let sources: Vec<SpiffeId> = SOURCES
        .iter()
        .chain(&quoted)
        .filter_map(|s| SpiffeId::parse(s).ok())
        .take(8)
        .collect();
    let methods = METHODS
        .iter()
        .chain(
            quoted
                .iter()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase())),
        )
        .take(4);
    let paths: Vec<String> = PATHS
        .iter()
        .chain(&quoted)
        .filter_map(|p| normalize_path(p).ok().map(|p| p.into_owned()))
        .take(8)
        .collect();
    let names: Vec<&str> = policy.rule_names().collect();
    let headers = http::HeaderMap::new();
    let now = SystemTime::now();
    for method in methods {
        for source in &sources {
            let admitted = policy.admits(source);
            for path in &paths {
                let request = Request {
                    source,
                    method,
                    path,
                    headers: &headers,
                };
                let decision = policy.evaluate_enforced(&request);
                assert_ne!(decision.verdict, Verdict::AuditDeny);
                match decision.rule.as_deref() {
                    Some(rule) => assert!(names.contains(&rule), "unknown rule {rule}"),
                    None => assert_eq!(
                        decision.verdict == Verdict::Allow,
                        policy.default_action() == Action::Allow
                    ),
                }
                let judged = policy.evaluate_at(&request, now);
                if !admitted {
                    assert_ne!(
                        decision.verdict,
                        Verdict::Allow,
                        "{source} not admitted, yet allowed"
                    );
                    assert!(
                        !judged.verdict.passes(),
                        "{source} not admitted, yet passed"
                    );
                }
                assert_eq!(judged.rule, policy.evaluate_at(&request, now).rule);
                let _ = policy.explain(&request, &judged, now);
            }
        }
    }
});
