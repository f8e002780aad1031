//! The offline policy tools, run as the binary: `policy learn` -> `policy test` round trip
//! on a generated decision log, `policy diff` on known policies, `validate` warnings.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FRONTEND: &str = "spiffe://example.org/ns/shop/sa/frontend";
const REPORTS: &str = "spiffe://example.org/ns/analytics/sa/reports";
const BATCH: &str = "spiffe://example.org/ns/jobs/sa/batch";

fn idgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idgate"))
        .args(args)
        .output()
        .expect("run idgate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn line(source: &str, method: &str, path: &str, decision: &str, rule: Option<&str>) -> String {
    serde_json::json!({
        "ts": "2026-11-26T10:00:00.123Z", "listener": "billing", "direction": "inbound",
        "source": source, "destination": "spiffe://example.org/ns/billing/sa/billing",
        "method": method, "path": path, "decision": decision, "rule": rule,
        "status": if decision == "deny" { 403 } else { 200 },
        "duration_ms": 0.4, "request_id": "r", "policy_version": "0123456789ab",
    })
    .to_string()
}

/// (source, method, path, decision) of the generated log.
const TRAFFIC: &[(&str, &str, &str, &str)] = &[
    (FRONTEND, "GET", "/api/invoices", "allow"),
    (FRONTEND, "GET", "/api/invoices/42", "allow"),
    (FRONTEND, "GET", "/api/invoices/77", "allow"),
    (FRONTEND, "POST", "/api/invoices", "allow"),
    (FRONTEND, "GET", "/api/invoices/summary", "audit_deny"),
    (FRONTEND, "DELETE", "/api/invoices/42", "deny"),
    (REPORTS, "GET", "/a", "allow"),
    (REPORTS, "POST", "/b", "allow"),
    (
        REPORTS,
        "GET",
        "/api/reports/123e4567-e89b-12d3-a456-426614174000/pdf",
        "audit_deny",
    ),
    (REPORTS, "GET", "/admin/users", "deny"),
];

fn write_log(dir: &Path) -> PathBuf {
    let mut log: Vec<String> = TRAFFIC
        .iter()
        .map(|(s, m, p, d)| line(s, m, p, d, None))
        .collect();
    // Outbound lines carry no policy decision and are ignored.
    log.push(line(BATCH, "PUT", "/x", "allow", None).replace("\"inbound\"", "\"outbound\""));
    let path = dir.join("billing-decisions.log");
    std::fs::write(&path, log.join("\n") + "\n").unwrap();
    path
}

/// `idgate policy learn --log LOG --out OUT`, which must succeed.
fn learn_into(log: &Path, out: &Path) -> Output {
    let learned = idgate(&[
        "policy",
        "learn",
        "--log",
        log.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(learned.status.code(), Some(0), "{}", text(&learned.stderr));
    learned
}

fn case(name: &str, from: &str, method: &str, path: &str, expect: &str) -> String {
    format!("[[case]]\nname = {name:?}\nfrom = {from:?}\nmethod = {method:?}\npath = {path:?}\nexpect = {expect:?}\n")
}

#[test]
fn learn_then_test_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let log = write_log(dir.path());
    let learned = dir.path().join("learned.toml");
    let out = learn_into(&log, &learned);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("learned 8 request(s) into"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "denied, not learned: 1x {FRONTEND} DELETE /api/invoices/42"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("1 outbound line(s) ignored"), "{stderr}");
    let policy = std::fs::read_to_string(&learned).unwrap();
    assert!(
        policy.starts_with("# Learned by `idgate policy learn` from "),
        "{policy}"
    );
    assert!(
        policy.contains("mode = \"enforce\"\ndefault = \"deny\"\n"),
        "{policy}"
    );
    assert!(policy.contains("\"/api/invoices/*\""), "{policy}");
    assert!(policy.contains("\"/api/reports/*\""), "{policy}");
    assert!(!policy.contains("/api/invoices/42"), "{policy}");
    assert!(policy.contains("name = \"shop-frontend-get\""), "{policy}");
    assert!(
        policy.contains("name = \"analytics-reports-post\""),
        "{policy}"
    );

    // Same input, same output.
    let again = idgate(&["policy", "learn", "--log", log.to_str().unwrap()]);
    assert_eq!(text(&again.stdout), policy);

    let mut cases = String::from("policy = \"learned.toml\"\n");
    for (i, (source, method, path, decision)) in TRAFFIC.iter().enumerate() {
        let expect = if *decision == "deny" { "deny" } else { "allow" };
        cases.push_str(&case(&format!("logged {i}"), source, method, path, expect));
    }
    for (name, from, method, path) in [
        (
            "unobserved method on an observed path",
            FRONTEND,
            "DELETE",
            "/api/invoices",
        ),
        (
            "unobserved method on a pattern",
            FRONTEND,
            "PUT",
            "/api/invoices/9",
        ),
        ("unobserved path", FRONTEND, "GET", "/api/customers"),
        ("no cross product (POST /a)", REPORTS, "POST", "/a"),
        ("no cross product (GET /b)", REPORTS, "GET", "/b"),
        ("other source's flow", REPORTS, "GET", "/api/invoices"),
        ("unknown source", BATCH, "GET", "/api/invoices"),
        ("outbound line not learned", BATCH, "PUT", "/x"),
    ] {
        cases.push_str(&case(name, from, method, path, "deny"));
    }
    cases.push_str(&case(
        "a new id",
        FRONTEND,
        "GET",
        "/api/invoices/1000",
        "allow",
    ));
    let tests = dir.path().join("learned.test.toml");
    std::fs::write(&tests, cases).unwrap();
    let out = idgate(&["policy", "test", tests.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}\n{policy}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("19 passed, 0 failed"),
        "{}",
        text(&out.stdout)
    );

    let out = idgate(&[
        "check",
        "--policy",
        learned.to_str().unwrap(),
        "--from",
        REPORTS,
        "--method",
        "POST",
        "--path",
        "/a",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
}

#[test]
fn learn_refuses_a_bad_log_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("bad.log");
    std::fs::write(
        &log,
        format!(
            "{}\n{{not json\n",
            line(FRONTEND, "GET", "/", "allow", None)
        ),
    )
    .unwrap();
    let out = idgate(&["policy", "learn", "--log", log.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with(&format!("error: {}:2: ", log.display())),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn learn_skips_a_method_a_policy_cannot_name() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("odd.log");
    let lines = [
        line(FRONTEND, "GE{T", "/api/invoices", "allow", None),
        line(FRONTEND, "GET", "/api/invoices", "allow", None),
    ];
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let out = idgate(&["policy", "learn", "--log", log.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "skipped: {}:1: method \"GE{{T\": \"GE{{T\" is not an HTTP method name",
            log.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("learned 1 request(s) into 1 rule(s)"),
        "{stderr}"
    );
    let policy = text(&out.stdout);
    assert!(policy.contains("methods = [\"GET\"]"), "{policy}");
}

/// Runs `idgate check` on `policy` for `from`; the exit code (0 allow, 1 deny).
fn check(policy: &Path, from: &str, method: &str, path: &str) -> Option<i32> {
    let out = idgate(&[
        "check",
        "--policy",
        policy.to_str().unwrap(),
        "--from",
        from,
        "--method",
        method,
        "--path",
        path,
    ]);
    out.status.code()
}

#[test]
fn learn_never_moves_a_method_to_a_sibling_route() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("users.log");
    let seen = [
        ("GET", "/users/42/profile"),
        ("DELETE", "/users/42/sessions"),
        ("GET", "/users/7/profile"),
    ];
    let lines: Vec<String> = seen
        .iter()
        .map(|(m, p)| line(FRONTEND, m, p, "allow", None))
        .collect();
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let learned = dir.path().join("learned.toml");
    let out = learn_into(&log, &learned);
    let policy = std::fs::read_to_string(&learned).unwrap();
    for (method, path) in seen {
        assert_eq!(
            check(&learned, FRONTEND, method, path),
            Some(0),
            "{method} {path}\n{policy}"
        );
    }
    for (method, path) in [
        ("DELETE", "/users/42/profile"),
        ("GET", "/users/42/sessions"),
        ("DELETE", "/users/7/sessions"),
    ] {
        assert_eq!(
            check(&learned, FRONTEND, method, path),
            Some(1),
            "{method} {path}\n{policy}"
        );
    }
    assert!(
        text(&out.stderr).contains("3 path(s) below /users/* kept exact"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn learn_never_generalises_over_an_enforced_denial() {
    const X: &str = "spiffe://e.org/ns/a/sa/x";
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log1.jsonl");
    let lines = [
        line(X, "GET", "/users/1", "allow", None),
        line(X, "GET", "/users/2", "allow", None),
        line(X, "GET", "/users/999", "deny", None),
    ];
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let learned = dir.path().join("learned.toml");
    let out = learn_into(&log, &learned);
    let policy = std::fs::read_to_string(&learned).unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(
        check(&learned, X, "GET", "/users/999"),
        Some(1),
        "{policy}\n{stderr}"
    );
    for path in ["/users/1", "/users/2"] {
        assert_eq!(check(&learned, X, "GET", path), Some(0), "{path}\n{policy}");
    }
    assert!(!policy.contains("/users/*"), "{policy}");
    assert!(
        stderr.contains(
            "learned 2 request(s) into 1 rule(s); 1 enforced denial(s) not learned; \
             1 generalisation(s) held back by enforced denials"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "note: {X}: 2 path(s) below /users/* not generalised to it: it would allow GET /users/999, an enforced denial"
        )),
        "{stderr}"
    );
}

#[test]
fn learn_keeps_a_request_logged_both_allowed_and_denied() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("changed.log");
    let lines = [
        line(FRONTEND, "GET", "/users/1", "allow", None),
        line(FRONTEND, "GET", "/users/1", "deny", None),
    ];
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let learned = dir.path().join("learned.toml");
    let out = learn_into(&log, &learned);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "allowed and denied: {FRONTEND} GET /users/1 was also logged allowed, so it is learned"
        )),
        "{stderr}"
    );
    assert_eq!(check(&learned, FRONTEND, "GET", "/users/1"), Some(0));
    assert_eq!(check(&learned, FRONTEND, "GET", "/users/2"), Some(1));
}

const OLD: &str = r#"
default = "deny"
[[rule]]
name = "r1"
action = "allow"
from = ["spiffe://example.org/ns/shop/*"]
paths = ["/api/*"]
"#;

const NEW: &str = r#"
mode = "audit"
default = "deny"
[[rule]]
name = "r2"
action = "allow"
from = ["spiffe://example.org/ns/shop/sa/frontend"]
methods = ["GET"]
paths = ["/api/invoices", "/api/invoices/*"]
[[rule]]
name = "reports"
action = "allow"
from = ["spiffe://example.org/ns/analytics/*"]
paths = ["/admin/users"]
"#;

#[test]
fn diff_lists_exact_changes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("d.log");
    let lines = [
        line(FRONTEND, "GET", "/api/invoices/42", "allow", Some("r1")),
        line(FRONTEND, "POST", "/api/invoices", "allow", Some("r1")),
        line(FRONTEND, "POST", "/api/invoices", "allow", Some("r1")),
        line(FRONTEND, "POST", "/api/invoices", "allow", Some("r1")),
        line(FRONTEND, "GET", "/api/x", "allow", Some("r1")),
        line(REPORTS, "GET", "/admin/users", "deny", None),
        line(BATCH, "GET", "/health", "deny", None),
    ];
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let old = dir.path().join("old.toml");
    let new = dir.path().join("new.toml");
    std::fs::write(&old, OLD).unwrap();
    std::fs::write(&new, NEW).unwrap();
    let args = |a: &Path, b: &Path| {
        idgate(&[
            "policy",
            "diff",
            "--old",
            a.to_str().unwrap(),
            "--new",
            b.to_str().unwrap(),
            "--log",
            log.to_str().unwrap(),
        ])
    };
    let out = args(&old, &new);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "{REPORTS}\n  1x GET /admin/users: deny -> allow (default -> rule reports)\n\
             {FRONTEND}\n  3x POST /api/invoices: allow -> deny (rule r1 -> default)\n  1x GET /api/x: allow -> deny (rule r1 -> default)\n\
             7 requests replayed, 4 newly denied, 1 newly allowed, 2 sources affected\n"
        )
    );
    let same = args(&old, &old);
    assert_eq!(same.status.code(), Some(0));
    assert_eq!(
        text(&same.stdout),
        "7 requests replayed, 0 newly denied, 0 newly allowed, 0 sources affected\n"
    );
    let missing = args(&old, &dir.path().join("nope.toml"));
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        text(&missing.stderr).contains("nope.toml"),
        "{}",
        text(&missing.stderr)
    );
}

/// Runs `idgate policy diff --old OLD --new NEW --log LOG`.
fn diff(old: &Path, new: &Path, log: &Path) -> Output {
    idgate(&[
        "policy",
        "diff",
        "--old",
        old.to_str().unwrap(),
        "--new",
        new.to_str().unwrap(),
        "--log",
        log.to_str().unwrap(),
    ])
}

#[test]
fn diff_does_not_judge_header_rules_without_headers() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.toml");
    let new = dir.path().join("new.toml");
    std::fs::write(
        &old,
        format!(
            "default = \"deny\"\n[[rule]]\nname = \"r1\"\naction = \"allow\"\nfrom = [{FRONTEND:?}]\npaths = [\"/api/*\"]\nheaders = {{ x-scan-status = \"passed\" }}\n\
             [[rule]]\nname = \"health\"\naction = \"allow\"\nfrom = [\"spiffe://example.org/*\"]\npaths = [\"/health\"]\n"
        ),
    )
    .unwrap();
    std::fs::write(
        &new,
        format!(
            "default = \"deny\"\n[[rule]]\nname = \"api\"\naction = \"allow\"\nfrom = [{FRONTEND:?}]\npaths = [\"/api/*\"]\n\
             [[rule]]\nname = \"health\"\naction = \"allow\"\nfrom = [\"spiffe://example.org/*\"]\npaths = [\"/health\"]\n\
             [[rule]]\nname = \"scanned\"\naction = \"deny\"\nfrom = [{BATCH:?}]\nheaders = {{ x-scan-status = \"failed\" }}\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("d.log");
    let lines = [
        // Allowed by r1 because the header was sent; the log does not say.
        line(FRONTEND, "GET", "/api/x", "allow", Some("r1")),
        line(FRONTEND, "GET", "/api/x", "allow", Some("r1")),
        line(FRONTEND, "GET", "/health", "allow", Some("health")),
        // r1 cannot match this source: decidable in the old policy; in the new one the
        // header deny rule could turn its allow into a deny.
        line(REPORTS, "GET", "/api/x", "deny", None),
        line(BATCH, "GET", "/health", "allow", Some("health")),
    ];
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let out = diff(&old, &new, &log);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(
        text(&out.stdout),
        format!(
            "undecidable: depends on headers, not in the decision log (not counted as changes)\n  {BATCH}\n    \
             1x GET /health: allow (rule health) -> allow (rule health) without headers, deny (rule scanned) with that rule's headers\n  {FRONTEND}\n    \
             2x GET /api/x: deny (default) without headers, allow (rule r1) with that rule's headers -> allow (rule api)\n\
             2 requests replayed, 0 newly denied, 0 newly allowed, 0 sources affected, 3 undecidable (depend on headers)\n"
        )
    );
}

#[test]
fn diff_that_replays_nothing_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("old.toml");
    std::fs::write(&policy, OLD).unwrap();
    let log = dir.path().join("d.log");
    let run = |log_text: &str, extra: &[&str]| {
        std::fs::write(&log, log_text).unwrap();
        let p = policy.to_str().unwrap();
        let mut args = vec!["policy", "diff", "--old", p, "--new", p];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--log", log.to_str().unwrap()]);
        let out = idgate(&args);
        (out.status.code(), text(&out.stderr))
    };
    let inbound = [
        line(FRONTEND, "GET", "/api/x", "allow", Some("r1")),
        line(REPORTS, "GET", "/api/x", "deny", None),
    ]
    .join("\n")
        + "\n";
    let (code, stderr) = run(&inbound, &["--listener", "billing"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = run(&inbound, &["--listener", "bliling"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        "error: no request replayed: 2 decision line(s) read, 2 of other listeners than --listener bliling (listeners in the logs: billing); nothing was compared\n"
    );
    let (code, stderr) = run("", &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("no request replayed: the logs hold no decision lines"),
        "{stderr}"
    );
    let outbound = line(BATCH, "PUT", "/x", "allow", None).replace("\"inbound\"", "\"outbound\"");
    let refused = line(FRONTEND, "GET", "/a%2fb", "deny", None);
    let (code, stderr) = run(&format!("{outbound}\n{refused}\n"), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("skipped: ")
            && stderr
                .contains("2 decision line(s) read, 1 outbound (no policy judges them), 1 skipped"),
        "{stderr}"
    );
}

fn certs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-dev")
}

fn config(dir: &Path, policy: &str) -> PathBuf {
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
    let c = certs();
    let toml = format!(
        "[identity]\nsource = \"files\"\ncert = \"{}\"\nkey = \"{}\"\nbundle = \"{}\"\n\n[[inbound]]\nname = \"api\"\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:1\"\npolicy = \"policy.toml\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        c.join("billing.pem").display(),
        c.join("billing-key.pem").display(),
        c.join("bundle.pem").display(),
    );
    let path = dir.join("idgate.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

#[test]
fn validate_warns_about_expired_shadowed_and_dead_rules() {
    let dir = tempfile::tempdir().unwrap();
    let policy = r#"default = "deny"
[[rule]]
name = "break-glass"
action = "allow"
from = ["spiffe://example.org/ns/ops/sa/oncall"]
expires = "2021-03-04T05:06:07Z"
[[rule]]
name = "admin-reads"
action = "allow"
from = ["spiffe://example.org/ns/shop/sa/frontend"]
paths = ["/admin/users"]
[[rule]]
name = "partner"
action = "allow"
from = ["spiffe://partner.org/*"]
[[rule]]
name = "nobody-uses-admin"
action = "deny"
paths = ["/admin", "/admin/*"]
"#;
    let config = config(dir.path(), policy);
    let out = idgate(&["validate", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let file = dir.path().join("policy.toml");
    let f = file.display();
    assert_eq!(
        text(&out.stderr),
        format!(
            "warning: {f}:6: rule[0].expires: rule \"break-glass\" expired at 2021-03-04T05:06:07Z and no longer applies; remove it or move expires\n\
             warning: {f}:8: rule[1].name: allow rule \"admin-reads\" is shadowed by deny rule \"nobody-uses-admin\" (rule[3]): every request it matches is denied (deny rules win)\n\
             warning: {f}:15: rule[2].from[0]: spiffe://partner.org/* can never match: no trust bundle is configured for trust domain partner.org (bundles: example.org); add it under [identity.federation] or remove the pattern\n"
        )
    );
    assert!(
        text(&out.stdout).contains("3 warning(s)"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn validate_refuses_duplicate_rule_names() {
    let dir = tempfile::tempdir().unwrap();
    let policy =
        "[[rule]]\nname = \"a\"\naction = \"allow\"\n[[rule]]\nname = \"a\"\naction = \"deny\"\n";
    let config = config(dir.path(), policy);
    let out = idgate(&["validate", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(":5: rule[1].name: duplicate rule name \"a\" (also rule[0])"),
        "{}",
        text(&out.stderr)
    );
}
